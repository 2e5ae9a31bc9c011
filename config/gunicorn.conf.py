# gunicorn settings for `errand serve`. The app is broker.app:create_app().
# Access logs carry method, path and status only: never a query string, never a header,
# so no token can reach a log line through them.
import os
import tempfile

# prometheus-client multiprocess mode: the directory must exist before any worker imports
# prometheus_client, so it is set here, in the master, before the workers fork.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="errand-metrics-")


def child_exit(server, worker):  # gunicorn's hook signature
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


bind = os.environ.get("ERRAND_BIND", "127.0.0.1:8080")
# 3 sync workers measured best on 2 cores (docs/benchmarks.md).
workers = int(os.environ.get("ERRAND_WEB_WORKERS", "3"))
worker_class = "sync"
timeout = 30
graceful_timeout = 10
keepalive = 5
backlog = 2048
accesslog = "-" if os.environ.get("ERRAND_ACCESS_LOG", "1") == "1" else None
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms'
errorlog = "-"
loglevel = "info"
