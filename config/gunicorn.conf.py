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


# The environment is read (and contradictions refused) by broker/settings.py, here in the
# master, before any worker starts. Imported only now: importing broker imports
# prometheus_client, which must see PROMETHEUS_MULTIPROC_DIR (above) when it loads.
from broker.settings import load_server_settings  # noqa: E402

errand = load_server_settings()

bind = errand.bind
workers = errand.web_workers
# gthread, with each request read by the worker's event loop under a deadline before a thread
# serves it (broker/gunicorn_worker.py): slow clients cost a socket, never a worker or a
# thread, and a request not whole within ERRAND_REQUEST_READ_TIMEOUT_SECONDS is closed.
# Stock `sync` and `gthread` block a worker (or thread) per trickling client (docs/benchmarks.md).
worker_class = "broker.gunicorn_worker.ReadTimeoutWorker"
threads = errand.web_threads
# With threads, `timeout` only bounds the worker's event loop (its heartbeat), not a request.
timeout = 30
graceful_timeout = 10
# Idle kept-alive connections are closed after this: make a proxy's upstream keep-alive
# (nginx keepalive_timeout in an upstream block, for example) shorter.
keepalive = errand.keepalive_seconds
worker_connections = 1000  # open connections per worker, idle and reading included
backlog = 2048
accesslog = "-" if errand.access_log else None
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms'
errorlog = "-"
loglevel = "info"
