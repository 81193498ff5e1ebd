"""``python -m mavrl_ppl.fit``: fit a reward posterior to feedback (simulated, or a user's own file) and write a run.

With no arguments: SVI on grid_trap with simulated feedback at the paper's fixed allocation, seed 0. Writes into
``--out`` atomically (a temporary directory renamed at the end): ``config.json``, ``feedback.nc``, ``posterior.nc``,
``metrics.json`` and PNG plots. ``--out`` is claimed at start-up, so a second run into the same directory stops at
once (:mod:`mavrl_ppl.rundirs`). Inputs whose estimated memory exceeds the machine's are refused before anything is
allocated; ``MAVRL_MAX_MEMORY_GB`` sets another limit (:mod:`mavrl_ppl.limits`). Exit status: 0 success, 2 bad input,
arguments or ``--out``, a damaged input file, or inputs too large (one line, nothing written), 1 anything else (for
NUTS: also a run that did not converge, unless ``--allow-unconverged``; its outputs are kept), 130 interrupted by
Ctrl-C and 143 terminated by SIGTERM (one line, nothing written).

A ``--config`` file may name plugins (``plugin = [...]``), which are imported, i.e. run: use only config files you
trust. Data files (``--data``) are only read, never run.

The pipeline itself is :mod:`mavrl_ppl.runs`; this module only turns the command line and a TOML file into its
settings and its outcome into an exit status.
"""

from __future__ import annotations

import os
import signal
import sys
import threading


def _interrupted_at_start(signum: int, frame: object) -> None:
    """Ctrl-C or SIGTERM while the command is still importing its libraries: nothing exists yet, so stop now, with
    one line (not the traceback of whatever import was running)."""
    what = "interrupted" if signum == signal.SIGINT else "terminated"
    os.write(2, f"{what}: nothing was written\n".encode())
    os._exit(128 + signum)


def hide_dask() -> None:
    """Make ``import dask`` fail in this process unless Dask is already loaded.

    One fit never uses Dask, but with Dask installed (a dependency, for scale-out) xarray imports dask.array at its
    first Variable and dask.distributed at every ``to_netcdf``, only to learn that no array is a Dask array: ~1 s of
    the default command on a 2-core machine. Marked absent (importlib's "None in sys.modules"), xarray skips both.
    The command calls this first thing; a library user's process is left alone.
    """
    sys.modules.setdefault("dask", None)  # type: ignore[arg-type]


if __name__ == "__main__" and threading.current_thread() is threading.main_thread():
    for _signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(_signum) is not signal.SIG_IGN:  # an ignored Ctrl-C (nohup, background jobs) stays so
            signal.signal(_signum, _interrupted_at_start)
    hide_dask()

import argparse  # noqa: E402 - after the start-up handlers: an import interrupted by Ctrl-C prints one line
import json  # noqa: E402
import tomllib  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, NoReturn  # noqa: E402

from mavrl_ppl.errors import UsageError  # noqa: E402

#: Flags that steer the command, not the run (never in config.json).
_COMMAND_FLAGS = ("config", "out", "overwrite", "allow_unconverged", "quiet", "simulate", "teacher")


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors as one line (``error: ...``, exit status 2) instead of the whole usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The command line: run settings, then one flag per SVI and NUTS setting (read from their dataclasses)."""
    from mavrl_ppl.baselines.mcmc.settings import NutsSettings
    from mavrl_ppl.envs.control import CONTROL_ENVS
    from mavrl_ppl.envs.grids import TABULAR_ENVS
    from mavrl_ppl.inference.settings import SVISettings
    from mavrl_ppl.options import add_dataclass_arguments

    p = OneLineParser(prog="python -m mavrl_ppl.fit", description=__doc__.split("\n\n")[0],
                      epilog="Inputs whose estimated memory exceeds the machine's are refused up front; the "
                      "environment variable MAVRL_MAX_MEMORY_GB (GiB) sets another limit. Exit status: 0 success, 2 "
                      "bad input, --out or damaged file (one line), 1 anything else (NUTS: also not converged), 130 "
                      "Ctrl-C, 143 SIGTERM.")
    p.add_argument("--inference", choices=["svi", "nuts"], default=None, help="inference method (default svi)")
    p.add_argument("--env", default=None, metavar="ENV", help=f"tabular env ({', '.join(TABULAR_ENVS)}) or control "
                   f"env ({', '.join(CONTROL_ENVS)}; svi only) (default grid_trap, or the --data file's env)")
    p.add_argument("--env-size", type=int, default=None, help="grid side / chain length (default: the env's)")
    p.add_argument("--p-rand", type=float, default=None, help="probability of a random move (default 0)")
    p.add_argument("--feedback", default=None, help="simulated counts per type (default: the env's paper allocation, "
                   "pref=64,demo=1,rating=64,stop=256 on the grids)")
    p.add_argument("--simulate", action="append", default=None, metavar="TYPE.SETTING=VALUE",
                   help="a simulator setting, e.g. stop.lapse=0.01 or pref.beta=2 (repeatable; TOML: [simulate.stop])")
    p.add_argument("--teacher", action="append", default=None, metavar="TYPE.SETTING=VALUE",
                   help="a setting of the simulated teacher only, not of the model (misspecification), e.g. "
                        "pref.beta=0.01, demo.beta=0.1, stop.c=0.1, rating.noise_sd=2 (repeatable; TOML: "
                        "[teacher.pref]); feedback.nc records it as teacher_<setting>")
    p.add_argument("--data", type=Path, default=None, help="fit this feedback.nc instead of simulating (its env is "
                   "taken from the file)")
    p.add_argument("--seed", type=int, default=None, help="seed of the simulation and the inference (default 0)")
    p.add_argument("--out", type=Path, default=None, help="run directory (default runs/<inference>_<env>_seed<seed>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out run directory (never a file "
                   "or a directory without config.json)")
    p.add_argument("--config", type=Path, default=None, help="TOML file of settings; command-line flags win (its "
                   "plugin = [...] runs code: use only config files you trust)")
    p.add_argument("--allow-unconverged", action="store_true",
                   help="NUTS: exit 0 (with a warning) even if the convergence checks fail")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--plugin", action="append", default=None, metavar="MODULE_OR_FILE",
                   help="import (i.e. run) a module or .py file that registers feedback types (repeatable)")
    control = p.add_argument_group("control envs (PPO retraining on the learned reward)")
    control.add_argument("--ppo-timesteps", type=int, default=None, help="PPO steps (default: the env's)")
    control.add_argument("--eval-episodes", type=int, default=None, help="true-return episodes (default 100)")
    add_dataclass_arguments(p.add_argument_group("SVI settings ([svi] in a TOML file)"), SVISettings, "svi",
                            skip=("progress_bar",))
    add_dataclass_arguments(p.add_argument_group("NUTS settings ([nuts] in a TOML file)"), NutsSettings, "nuts",
                            skip=("progress_bar", "seed"))
    return p


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The run settings a command line gives: the ``--config`` TOML file, overridden by the flags."""
    settings: dict[str, Any] = {}
    if args.config is not None:
        try:
            settings = tomllib.loads(Path(args.config).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise UsageError(f"{args.config}: cannot read config: {exc}") from None
    for key, value in vars(args).items():
        if value is None or key in _COMMAND_FLAGS:
            continue
        if "." in key:
            table, name = key.split(".", 1)
            settings.setdefault(table, {})[name] = value
        else:
            settings[key] = str(value) if isinstance(value, Path) else value
    for table in ("simulate", "teacher"):
        for item in getattr(args, table) or []:
            name, setting, value = parse_simulator_setting(item, f"--{table}")
            settings.setdefault(table, {}).setdefault(name, {})[setting] = value
    return settings


def parse_simulator_setting(text: str, flag: str = "--simulate") -> tuple[str, str, Any]:
    """``"stop.lapse=0.01"`` -> ``("stop", "lapse", 0.01)``; the value is read as a TOML value (numbers, booleans,
    quoted strings), else kept as the bare string. ``flag`` names the option in the error message."""
    key, sep, raw = text.partition("=")
    name, dot, setting = key.strip().partition(".")
    if not (sep and dot and name and setting and raw.strip()):
        raise UsageError(f"{flag} {text!r}: expected TYPE.SETTING=VALUE, e.g. stop.lapse=0.01")
    try:
        value = tomllib.loads(f"value = {raw.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return name, setting.strip(), value


class Terminated(BaseException):
    """SIGTERM (a batch scheduler, ``kill``): unwinds like Ctrl-C, so the half-written run directory is removed."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (Ctrl-C: 130, SIGTERM: 143, each with one line on stderr)."""
    handlers = threading.current_thread() is threading.main_thread()  # signal handlers can only be set there
    if handlers:
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s, handler in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, _terminate)):
            if previous[s] is not signal.SIG_IGN:
                signal.signal(s, handler)
    written, interrupted = None, False
    try:
        args = build_parser().parse_args(argv)
        from mavrl_ppl import runs

        settings = settings_from_args(args)
        source = str(args.config) if args.config is not None else "settings"
        config = runs.resolve_config(settings, source=source)
        if config["inference"] == "nuts":
            # JAX reads its device count once, at start-up: set it before a plugin or anything else imports JAX.
            from mavrl_ppl.baselines.mcmc.devices import set_host_devices

            set_host_devices()
        result = runs.run(config, args.out, progress=not args.quiet, overwrite=args.overwrite)
        written = result.out
        return report(result, allow_unconverged=args.allow_unconverged)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as exc:
        interrupted = True
        if handlers:  # a second signal while the message is printed must not turn it into a traceback
            for s in (signal.SIGINT, signal.SIGTERM):
                signal.signal(s, signal.SIG_IGN)
        what, status = ("interrupted", 130) if isinstance(exc, KeyboardInterrupt) else ("terminated", 143)
        done = f"the run was written to {written}" if written is not None else "nothing was written"
        print(f"{what}: {done}", file=sys.stderr)
        return status
    finally:
        if handlers and not interrupted:
            for s, handler in previous.items():
                signal.signal(s, handler)


def report(result: Any, *, allow_unconverged: bool) -> int:
    """Print the run's headline metrics (stdout) and verdict (stderr); the exit status of a finished run."""
    metrics = result.metrics
    keys = ("inference", "env", "seed", "normalized_score", "epic", "mean_return", "ppo_timesteps", "fit_seconds")
    print(json.dumps({k: metrics[k] for k in keys if k in metrics}), file=sys.stdout)
    print(f"wrote {result.out}", file=sys.stderr)
    if result.converged:
        return 0
    lp = ""
    if "rhat_lp" in metrics:
        means = ", ".join(f"{m:.1f}" for m in metrics["lp_chain_means"])
        lp = f", log-density R-hat {metrics['rhat_lp']:.4f} (chain means {means})"
    what = (f"NUTS did not converge (R-hat max {metrics['rhat_max']:.4f}{lp}, bulk ESS min "
            f"{metrics['ess_bulk_min']:.0f}, {metrics['divergences']} divergences)")
    if allow_unconverged:
        print(f"warning: {what}; accepted (--allow-unconverged).", file=sys.stderr)
        return 0
    print(f"error: {what}; outputs kept for inspection. Pass --allow-unconverged to accept.", file=sys.stderr)
    return 1


if __name__ == "__main__":
    _status = main()
    if "mavrl_ppl.runs" in sys.modules and sys.modules["mavrl_ppl.runs"].abandoned_work():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_status)  # see runs.abandoned_work: an interrupted fit's thread must not hold up the exit
    sys.exit(_status)
