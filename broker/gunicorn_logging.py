"""gunicorn's error and access logs in the broker's JSON line format (config/gunicorn.conf.py
names this class as `logger_class`).

gunicorn's own setup runs first, so `accesslog`, `errorlog` and `loglevel` keep their meaning
(no access log when ERRAND_ACCESS_LOG is off); only the formatters change. The access line's
message is still `access_log_format` (method, path, status: no query string, no header); the
record's args, which hold every request header, are never written."""

from __future__ import annotations

from typing import Any

from gunicorn.glogging import Logger

from broker.logging_json import JsonFormatter


class JsonLogger(Logger):  # type: ignore[misc]
    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(JsonFormatter())
