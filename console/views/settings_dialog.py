"""Connect the console to an existing PostgreSQL, S3/MinIO and remote live feeds instead of the embedded
services. Secrets go to the OS keyring where one exists, else to a 0600 file; applied at the next start."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QSpinBox,
    QWidget,
)

from console.domain.connection import SavedConnection, SecretStore, load_connection, save_connection


class SettingsDialog(QDialog):
    def __init__(self, parent: QWidget | None = None, secrets: SecretStore | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Connection settings")
        self.secrets = secrets or SecretStore()
        conn = load_connection() or SavedConnection()
        self.embedded = QCheckBox("Run everything on this machine (embedded PostgreSQL and S3)")
        self.embedded.setChecked(conn.embedded)
        self.db_host = QLineEdit(conn.db_host)
        self.db_port = QSpinBox(maximum=65535, value=conn.db_port)
        self.db_user = QLineEdit(conn.db_user)
        self.db_name = QLineEdit(conn.db_name)
        self.db_password = QLineEdit(self.secrets.get("database.password"), echoMode=QLineEdit.EchoMode.Password)
        self.s3_endpoint = QLineEdit(conn.s3_endpoint, placeholderText="host:9000 (empty: no audio)")
        self.s3_access = QLineEdit(conn.s3_access_key)
        self.s3_secret = QLineEdit(self.secrets.get("minio.secret_access_key"), echoMode=QLineEdit.EchoMode.Password)
        self.s3_bucket = QLineEdit(conn.s3_bucket)
        self.s3_ssl = QCheckBox("use TLS", checked=conn.s3_use_ssl)
        self.remote = QLineEdit(", ".join(conn.remote_live_urls), placeholderText="ws://host:8000/xiaozhi/live")
        self.live_token = QLineEdit(self.secrets.get("remote.live_token"), echoMode=QLineEdit.EchoMode.Password)
        form = QFormLayout(self)
        form.addRow(self.embedded)
        for label, w in (("PostgreSQL host", self.db_host), ("port", self.db_port), ("user", self.db_user),
                         ("database", self.db_name), ("password", self.db_password),
                         ("S3 endpoint", self.s3_endpoint), ("access key", self.s3_access),
                         ("secret key", self.s3_secret), ("bucket", self.s3_bucket), ("", self.s3_ssl),
                         ("remote live feeds", self.remote), ("live token", self.live_token)):  # fmt: skip
            form.addRow(label, w)
        form.addRow(QLabel(f"Secrets are kept in {self.secrets.where}. Changes apply at the next start."))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.save)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def connection(self) -> SavedConnection:
        urls = [u.strip() for u in self.remote.text().split(",") if u.strip()]
        return SavedConnection(
            embedded=self.embedded.isChecked(), db_host=self.db_host.text(), db_port=self.db_port.value(),
            db_user=self.db_user.text(), db_name=self.db_name.text(), s3_endpoint=self.s3_endpoint.text().strip(),
            s3_access_key=self.s3_access.text(), s3_bucket=self.s3_bucket.text(), s3_use_ssl=self.s3_ssl.isChecked(),
            remote_live_urls=urls,
        )  # fmt: skip

    def save(self) -> None:
        save_connection(
            self.connection(),
            {
                "database.password": self.db_password.text(),
                "minio.secret_access_key": self.s3_secret.text(),
                "remote.live_token": self.live_token.text(),
            },
            self.secrets,
        )
        self.accept()
