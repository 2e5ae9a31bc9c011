# gunicorn settings for `errand serve`. The app is broker.app:create_app().
# Access logs carry method, path and status only: never a query string, never a header,
# so no token can reach a log line through them.
import os
import shutil
import tempfile

# prometheus-client multiprocess mode: the directory must exist before any worker imports
# prometheus_client, so it is set here, in the master, before the workers fork. Unless
# PROMETHEUS_MULTIPROC_DIR names one, each master makes its own (mode 0700, under $TMPDIR)
# and removes it when it exits: two brokers on one machine never mix their metrics, and no
# start leaves a folder behind. gunicorn reads this file again on SIGHUP; the marker (the
# master's pid) keeps the directory it made first.
_OWNER_MARK = ".errand-master-pid"


def _metrics_dir_of_this_master():
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    try:
        with open(os.path.join(path, _OWNER_MARK)) as mark:
            return path if mark.read().strip() == str(os.getpid()) else None
    except OSError:
        return None


if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _made = tempfile.mkdtemp(prefix="errand-metrics-")
    with open(os.path.join(_made, _OWNER_MARK), "w") as _mark:
        _mark.write(str(os.getpid()))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _made
_own_metrics_dir = _metrics_dir_of_this_master()


def child_exit(server, worker):  # gunicorn's hook signature
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):  # gunicorn's hook signature: the master is about to exit
    if _own_metrics_dir:
        shutil.rmtree(_own_metrics_dir, ignore_errors=True)


# gunicorn's control socket (for gunicornc) defaults to one path per user
# ($HOME/.gunicorn/gunicorn.ctl): a second broker on the machine would take over, and on exit
# remove, the first one's socket. Errand does not use it; stop the master with SIGTERM.
control_socket_disable = True


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
# Every line, error log and access log alike, is one JSON object (broker/logging_json.py),
# as the app's own log lines and the worker's are.
logger_class = "broker.gunicorn_logging.JsonLogger"
