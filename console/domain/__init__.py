"""The console's Qt-free half: data access, paging, view state, export, audio decoding and formatting.

Nothing here imports Qt, so it is testable without a display and reusable by other front ends.
"""
