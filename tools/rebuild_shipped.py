"""Build every toy model the package ships, on parallel processes (maintainers; never run by CI).

    python tools/rebuild_shipped.py <cache folder> [--workers 2] [--logs DIR]

Each build of `longalign.experiments.toy_shipped_builds` (the notebooks' own calls) runs in a fresh process with one thread,
as soon as the builds it needs are done, the first ready one in the list's order (longest chain first), at most `--workers`
at a time; its output (progress bars, notes) goes to <logs>/<name>.log. A failed build stops the others and exits non-zero;
entries already built stay in the cache, so a rerun into the same cache resumes (rebuild_shipped.sh always starts empty). `tools/rebuild_shipped.sh` runs this into an empty cache with
the shipped copies hidden, then the notebooks."""
import argparse, importlib, os, re, signal, sys, time
from multiprocessing import get_context
from multiprocessing.connection import wait


def load_builds(spec: str, cache_dir) -> dict:
    "The builds `module:function(cache_dir)` returns: name -> (names it needs, function of no arguments)."
    module, function = spec.split(":")
    return getattr(importlib.import_module(module), function)(cache_dir)


def _child(spec: str, cache_dir: str, name: str, log: str):
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})   # started with them blocked (run_builds)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1); os.dup2(fd, 2)              # this process's stdout and stderr (progress bars too) go to its log
    os.environ["OMP_NUM_THREADS"] = "1"         # one thread per build (torch reads it when the build imports it)
    t0 = time.time()
    load_builds(spec, cache_dir)[name][1]()
    print(f"\n{name}: done in {time.time() - t0:.0f} s", flush=True)


def log_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", name.replace("ω=", "omega")) + ".log"


def run_builds(spec: str, cache_dir, workers: int = 2, logs=".", say=print) -> dict:
    "Run every build of `spec` on `workers` processes, each once what it needs is built; name -> seconds it took."
    needs = {name: tuple(n) for name, (n, _) in load_builds(spec, cache_dir).items()}
    unknown = {n for ns in needs.values() for n in ns} - set(needs)
    if unknown: raise ValueError(f"{spec}: needs {sorted(unknown)} are not builds of the list")
    os.makedirs(logs, exist_ok=True)
    ctx, pending, running, done, took = get_context("spawn"), list(needs), {}, set(), {}
    start = time.time()
    stamp = lambda: f"[{(time.time() - start) / 60:5.1f} min]"
    try:
        while pending or running:
            for name in [n for n in pending if set(needs[n]) <= done][:workers - len(running)]:
                pending.remove(name)
                p = ctx.Process(target=_child, args=(spec, str(cache_dir), name, os.path.join(logs, log_name(name))), name=name)
                blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})   # started = recorded
                try: p.start(); running[p.sentinel] = (name, p, time.time())
                finally: signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
                say(f"{stamp()} start  {name}")
            if not running: raise ValueError(f"{spec}: {pending} need each other (a cycle): nothing can start")
            for sentinel in wait(list(running)):
                name, p, t0 = running.pop(sentinel)
                p.join()
                if p.exitcode != 0:
                    raise RuntimeError(f"build {name!r} failed (exit {p.exitcode}): see {os.path.join(logs, log_name(name))}")
                took[name] = time.time() - t0; done.add(name)
                say(f"{stamp()} done   {name} ({took[name]:.0f} s)")
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})   # a second signal cannot cut this short
        for name, p, _ in running.values():      # a failure (or Ctrl-C, SIGTERM) stops the other builds; their checkpoints stay
            p.terminate(); p.join()
    return took


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cache", help="the cache folder to build into (LONGALIGN_CACHE for the notebooks afterwards)")
    ap.add_argument("--workers", type=int, default=2, help="builds at once, one thread each (default 2: this machine's cores)")
    ap.add_argument("--logs", default="rebuild-logs", help="a log per build")
    ap.add_argument("--builds", default="longalign.experiments:toy_shipped_builds", help="module:function giving the builds")
    a = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # killed: run_builds' `finally` stops the builds it started
    t0 = time.time()
    took = run_builds(a.builds, os.path.abspath(a.cache), a.workers, a.logs)
    print(f"{len(took)} builds in {(time.time() - t0) / 60:.1f} min on {a.workers} processes "
          f"(their own times add up to {sum(took.values()) / 60:.1f} min)")


if __name__ == "__main__":
    main()
