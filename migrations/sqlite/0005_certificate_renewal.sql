-- Certificate renewal: the serial of the certificate a device renewed from, still accepted until the device
-- first presents its new one (a device that crashed between the server's answer and storing the new
-- certificate is not locked out); NULL once the new one was used.
ALTER TABLE devices ADD COLUMN cert_serial_prev TEXT;
