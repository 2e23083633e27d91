"""The console's widgets (Qt only here and in console/models; console/domain has no Qt)."""
