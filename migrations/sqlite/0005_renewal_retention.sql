-- Certificate renewal: the serial of the certificate a device renewed from, still accepted until the device
-- first presents its new one (a device that crashed between the server's answer and storing the new
-- certificate is not locked out); NULL once the new one was used.
ALTER TABLE devices ADD COLUMN cert_serial_prev TEXT;

-- Retention: device events and audit entries older than their configured lifetimes are deleted by time.
CREATE INDEX device_events_received_at ON device_events (received_at);
CREATE INDEX audit_log_at ON audit_log (at);
