"""Every artifact's path and schema, defined once; every write atomic.

No other module formats an artifact path or a JSON schema. Layout under a root directory
(the current directory by default), exactly the chapter's table in section 3.1 (shown with
chapter 2's :class:`ArtifactNames`; a chapter's spec in ``fetchrl.chapters`` gives its own)::

    checkpoints/ppo_FetchReachDense-v4_seed0.zip
    checkpoints/ppo_FetchReachDense-v4_seed0.meta.json
    results/ch02_ppo_fetchreachdense-v4_seed0_eval.json
    runs/ppo/FetchReachDense-v4/seed0/
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, TypeVar, runtime_checkable

from fetchrl.algos.base import NON_NEGATIVE, POSITIVE_INT, RUN_BOUNDS, UNIT_CLOSED, Bounds
from fetchrl.config import ALGO, DEFAULT_ENV_ID
from fetchrl.errors import FetchRLError
from fetchrl.runtime import FAST_ENVS

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")

#: A JSON object as parsed from disk: untyped until a ``from_dict`` checks its fields.
JSONObject = dict[str, Any]


# ============================================================================ paths
@dataclass(frozen=True)
class ArtifactNames:
    """A chapter's names in the artifact layout; :class:`RunPaths` and the functions below format every path.

    The layout (section 3.1) is the same for every chapter; only these names change: chapter 3's
    runs are ``checkpoints/sac_FetchReachDense-v4_seed0.zip`` and
    ``results/ch03_sac_fetchreachdense-v4_seed0_eval.json``.
    """

    chapter: str
    """Prefix of every file under ``results/`` and ``videos/``: ``"ch02"``."""
    algo: str
    """The algorithm's short name: checkpoint prefix and ``runs/<algo>/``: ``"ppo"``."""
    multi_seed: str
    """Stem of the multi-seed aggregate's JSON and PNG: ``"ch02_ppo_reachdense"``."""
    title: str = ""
    """How reports name the run's algorithm (arm): ``"SAC + HER"``, ``"SAC without HER"``
    (empty: ``algo`` in capitals, ``"PPO"``)."""
    html_per_run: bool = False
    """The HTML report is named like the run's other results (``ch04_sac_her_fetchpush-v4_seed0_report.html``):
    a chapter with two arms or several tasks, whose runs of one seed would share ``ch04_report_seed0.html``."""
    diagnose_rules: str = ""
    """The ``diagnose`` rule set that judges the run (``fetchrl.analysis.diagnose.RULES``; empty: ``algo``'s):
    chapter 4's control arm, SAC on sparse goals, is judged by ``"sac_sparse"``, not chapter 3's SAC rules."""

    @property
    def rules(self) -> str:
        """The name of the rule set ``diagnose`` applies to this chapter's runs."""
        return self.diagnose_rules or self.algo


#: Chapter 2's names: the default of code that does not say which chapter it runs (it predates
#: chapters). ``fetchrl.chapters.ch02`` spells the same names out; tests/test_chapters.py pins both.
DEFAULT_NAMES = ArtifactNames(chapter="ch02", algo=ALGO, multi_seed="ch02_ppo_reachdense", title="PPO")


@dataclass(frozen=True)
class RunPaths:
    """Where one (env_id, seed) run keeps its artifacts, relative to ``root``."""

    env_id: str
    seed: int
    root: Path = Path(".")
    names: ArtifactNames = DEFAULT_NAMES
    """The chapter's names (default: chapter 2's)."""
    interim: bool = False
    """True for :attr:`partial`'s paths: a run in progress beside a finished one."""

    @property
    def _stem(self) -> str:
        return f"{self.names.algo}_{self.env_id}_seed{self.seed}" + (".partial" if self.interim else "")

    @property
    def partial(self) -> RunPaths:
        """Where a run that would replace or extend a finished one writes until it completes
        (``….seedN.partial.zip``, ``….seedN.partial.meta.json``, ``runs/…/seedN.partial/``); only then is it
        renamed onto this run's paths, so an interrupted run never touches the finished result."""
        return dataclasses.replace(self, interim=True)

    @property
    def lock(self) -> Path:
        """The per-run lock file (``checkpoints/.ppo_…_seedN.lock``, the holder's PID inside; gone when released)."""
        return self.root / "checkpoints" / f".{self.names.algo}_{self.env_id}_seed{self.seed}.lock"

    @property
    def _result_stem(self) -> str:
        return f"{self.names.chapter}_{self.names.algo}_{self.env_id.lower()}_seed{self.seed}"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoints" / f"{self._stem}.zip"

    @property
    def meta(self) -> Path:
        return self.root / "checkpoints" / f"{self._stem}.meta.json"

    @property
    def replay_buffer(self) -> Path:
        """An off-policy run's replay buffer (SB3's ``save_replay_buffer`` pickle), beside its checkpoint."""
        return self.root / "checkpoints" / f"{self._stem}.replay_buffer.pkl"

    @property
    def eval_json(self) -> Path:
        return self.root / "results" / f"{self._result_stem}_eval.json"

    @property
    def report_md(self) -> Path:
        return self.root / "results" / f"{self._result_stem}_report.md"

    @property
    def diagnosis_json(self) -> Path:
        return self.root / "results" / f"{self._result_stem}_diagnosis.json"

    @property
    def curves_png(self) -> Path:
        return self.root / "results" / f"{self._result_stem}_curves.png"

    @property
    def html_report(self) -> Path:
        if self.names.html_per_run:
            return self.root / "results" / f"{self._result_stem}_report.html"
        return self.root / "results" / f"{self.names.chapter}_report_seed{self.seed}.html"

    @property
    def video_gif(self) -> Path:
        return self.root / "videos" / f"{self._result_stem}.gif"

    @property
    def video_mp4(self) -> Path:
        return self.root / "videos" / f"{self._result_stem}.mp4"

    @property
    def tb_dir(self) -> Path:
        """TensorBoard run directory; exactly this path, no ``_1`` suffix."""
        leaf = f"seed{self.seed}" + (".partial" if self.interim else "")
        return self.root / "runs" / self.names.algo / self.env_id / leaf


def multi_seed_aggregate_path(root: Path = Path("."), names: ArtifactNames = DEFAULT_NAMES) -> Path:
    return root / "results" / f"{names.multi_seed}_aggregate.json"


def multi_seed_plot_path(root: Path = Path("."), names: ArtifactNames = DEFAULT_NAMES) -> Path:
    return root / "results" / f"{names.multi_seed}_aggregate.png"


def ablation_path(param: str = "clip_range", root: Path = Path("."), names: ArtifactNames = DEFAULT_NAMES) -> Path:
    return root / "results" / f"{names.chapter}_ablation_{param}.json"


def ablation_plot_path(param: str = "clip_range", root: Path = Path("."),
                       names: ArtifactNames = DEFAULT_NAMES) -> Path:
    return root / "results" / f"{names.chapter}_ablation_{param}.png"


def trial_root(sweep_name: str, trial_tag: str, root: Path = Path(".")) -> Path:
    """Root directory of one sweep configuration; under it the usual RunPaths layout."""
    return root / "sweeps" / sweep_name / trial_tag


# ============================================================================ atomic writes
@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temp path in ``target``'s directory; rename it onto ``target`` only on success.

    A crash, a full disk or Ctrl-C leaves the previous ``target`` untouched and no partial file.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    except OSError as err:
        raise FetchRLError(f"cannot write {target}: {err.strerror or err}", exit_code=1) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600 files; artifacts are meant to be shared like any file the user writes.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_bytes(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as err:
            raise FetchRLError(f"cannot write {target}: {err.strerror or err}", exit_code=1) from None


def atomic_write_text(target: Path, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


@runtime_checkable
class _Scalar(Protocol):
    """A NumPy or torch scalar (``isinstance`` checks only that ``item`` exists)."""

    def item(self) -> object: ...


def _json_default(obj: object) -> object:
    if isinstance(obj, _Scalar):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def json_safe(obj: object) -> object:
    """JSON has no NaN/inf: write them as null rather than produce invalid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def write_json(target: Path, payload: Mapping[str, object]) -> None:
    text = json.dumps(json_safe(payload), indent=2, default=_json_default, allow_nan=False)
    atomic_write_text(target, text + "\n")


def read_json(path: Path, what: str) -> JSONObject:
    """Read a JSON object, or raise FetchRLError naming the file and what to do."""
    path = Path(path)
    if not path.is_file():
        raise FetchRLError(f"{what} not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FetchRLError(f"{what} {path} is corrupt or truncated ({type(err).__name__}); delete it and rerun") from None
    if not isinstance(data, dict):
        raise FetchRLError(f"{what} {path} is not a JSON object")
    return data


def _from_dict(cls: type[T], data: JSONObject, path: Path, what: str) -> T:
    names = {f.name for f in dataclasses.fields(cls)}
    required = {
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    missing = sorted(required - data.keys())
    if missing:
        raise FetchRLError(f"{what} {path} is missing field(s): {', '.join(missing)}")
    return cls(**{k: v for k, v in data.items() if k in names})


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def collect_versions() -> dict[str, str]:
    """Versions of everything that can change a number, for the metadata and eval JSON."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for key, dist in (
        ("numpy", "numpy"),
        ("torch", "torch"),
        ("gymnasium", "gymnasium"),
        ("gymnasium_robotics", "gymnasium-robotics"),
        ("mujoco", "mujoco"),
        ("stable_baselines3", "stable-baselines3"),
        ("fetchrl", "fetchrl"),
    ):
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            out[key] = "not installed"
    return out


# ============================================================================ schemas
@dataclass
class TrainMeta:
    """``checkpoints/ppo_<env>_seed<N>.meta.json``."""

    created_at: str
    algo: str
    env_id: str
    seed: int
    device: str
    n_envs: int
    total_steps: int
    hyperparameters: dict[str, object]
    wall_time_s: float
    steps_per_second: float
    checkpoint: str
    versions: dict[str, str]
    num_timesteps: int = 0
    """Steps actually trained (equals total_steps for a complete run)."""
    complete: bool = True
    """False when training was interrupted; ``train --resume`` continues it."""
    stop_reason: str = "completed"
    fast_env: bool = True
    observation_space: str = ""
    action_space: str = ""
    portable: bool = False
    """Trained in portable mode (``--portable``): its numbers do not depend on the CPU (x86-64 with AVX2)."""

    def to_json(self, path: Path) -> None:
        write_json(path, dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: JSONObject, path: Path, what: str = "checkpoint metadata") -> TrainMeta:
        """The metadata in ``data``; FetchRLError naming ``path`` for a missing field or an impossible value."""
        meta = _from_dict(cls, data, path, what)
        problem = meta.problem()
        if problem is not None:
            raise FetchRLError(f"{what} {path} is invalid: {problem}; retrain it or restore the file")
        return meta

    def problem(self) -> str | None:
        """The first impossible value (wrong type, negative count, seed numpy refuses), or None."""
        numbers = (("seed", RUN_BOUNDS["seed"]), ("n_envs", POSITIVE_INT), ("total_steps", POSITIVE_INT),
                   ("num_timesteps", _COUNT), ("wall_time_s", NON_NEGATIVE), ("steps_per_second", NON_NEGATIVE))
        for name, bounds in numbers:
            problem = _number_problem(name, getattr(self, name), bounds)
            if problem is not None:
                return problem
        for name, kind in (("created_at", str), ("algo", str), ("env_id", str), ("device", str),
                           ("hyperparameters", dict), ("versions", dict), ("complete", bool)):
            if not isinstance(getattr(self, name), kind):
                return f"{name} must be a {kind.__name__}, got {getattr(self, name)!r}"
        return None

    @classmethod
    def from_json(cls, path: Path) -> TrainMeta:
        return cls.from_dict(read_json(path, "checkpoint metadata"), path)


@dataclass
class EpisodeRecord:
    """One deterministic evaluation episode."""

    seed: int
    """The reset seed of this episode."""
    #: written as "return" in JSON (a Python keyword)
    return_: float
    length: int
    success: bool
    """``info["is_success"]`` at the episode's last step."""
    final_distance: float
    """||achieved_goal - desired_goal|| of the terminal observation, metres."""
    time_to_success: int | None
    """First step (1-based) at which is_success was 1, or None."""
    action_smoothness: float
    """Mean ||a_t - a_{t-1}||_2 over the episode (lower is smoother)."""
    action_max_abs: float
    """Largest |a_i| over the episode (1.0 means the policy saturates the action bounds)."""

    def to_dict(self) -> dict[str, object]:
        d = dataclasses.asdict(self)
        d["return"] = d.pop("return_")
        return d

    @classmethod
    def from_dict(cls, d: JSONObject) -> EpisodeRecord:
        d = dict(d)
        d["return_"] = d.pop("return")
        return cls(**d)

    def problem(self, limits: EpisodeLimits | None = None) -> str | None:
        """The first value no episode can have (``limits``: the task's, when known), or None."""
        max_steps = limits.max_steps if limits is not None else math.inf
        distance = limits.distance if limits is not None else NON_NEGATIVE
        numbers = (("seed", RUN_BOUNDS["seed"]), ("return", limits.returns if limits is not None else _FINITE),
                   ("length", Bounds(low=1, high=max_steps, integer=True)), ("final_distance", distance),
                   ("action_smoothness", NON_NEGATIVE), ("action_max_abs", NON_NEGATIVE))
        for name, bounds in numbers:
            problem = _number_problem(name, getattr(self, "return_" if name == "return" else name), bounds)
            if problem is not None:
                return problem
        if not isinstance(self.success, bool):
            return f"success must be true or false, got {self.success!r}"
        if self.time_to_success is not None:
            return _number_problem("time_to_success", self.time_to_success,
                                   Bounds(low=1, high=self.length, integer=True))
        if self.success:
            return "success is true but time_to_success is null (a success is first reached at some step)"
        return None


# ============================================================================ validation on load
#: Every finite number.
_FINITE = Bounds()
#: An integer >= 0.
_COUNT = Bounds(low=0, integer=True)
#: A generous bound on any goal distance in a Fetch scene, in metres: the table is about 1 m across and
#: the arm reaches about 1 m; an object pushed off the table lands well within it. A Fetch task's dense
#: reward is minus this distance at every step.
FETCH_MAX_DISTANCE = 5.0
#: Relative tolerance between an eval JSON's ``aggregate`` and the one recomputed from its rows: both
#: are written by :func:`aggregate_episodes`, so only a hand edit (or another writer) differs by more.
AGGREGATE_RTOL = 1e-6


@dataclass(frozen=True)
class EpisodeLimits:
    """What one episode of a task can produce, read from its registered Gymnasium spec."""

    max_steps: int
    """``max_episode_steps``: the TimeLimit truncates every episode there (Fetch: 50; it never terminates)."""
    reward_type: str | None
    """A Fetch task's ``"dense"`` (minus the goal distance each step) or ``"sparse"`` (-1 or 0 each step)
    reward; None for another task, whose returns and distances are only required to be finite."""

    @property
    def returns(self) -> Bounds:
        """Returns an episode can have: dense [-FETCH_MAX_DISTANCE * max_steps, 0], sparse [-max_steps, 0]."""
        if self.reward_type == "dense":
            return Bounds(low=-FETCH_MAX_DISTANCE * self.max_steps, high=0)
        if self.reward_type == "sparse":
            return Bounds(low=-self.max_steps, high=0)
        return _FINITE

    @property
    def distance(self) -> Bounds:
        """Goal distances an episode can end at, in metres."""
        return Bounds(low=0, high=FETCH_MAX_DISTANCE) if self.reward_type is not None else NON_NEGATIVE


def episode_limits(env_id: str) -> EpisodeLimits | None:
    """``env_id``'s :class:`EpisodeLimits` from Gymnasium's registry; None when it is not registered in
    this process (``fetchrl.tasks.envs.register_envs`` registers Fetch; every command that builds an env,
    ``report`` included, has run it before reading an eval JSON) or has no episode limit."""
    gym = sys.modules.get("gymnasium")  # not imported: nothing can have registered the id either
    spec = gym.registry.get(env_id) if gym is not None else None
    if spec is None or not spec.max_episode_steps:
        return None
    reward_type = None
    if env_id.startswith("Fetch"):  # other goal tasks (PointMaze: exp(-d)) reward distances otherwise
        reward_type = FAST_ENVS.get(env_id) or spec.kwargs.get("reward_type")
    return EpisodeLimits(int(spec.max_episode_steps), reward_type if reward_type in ("dense", "sparse") else None)


def _number_problem(name: str, value: object, bounds: Bounds) -> str | None:
    """``"<name> must be a number in [0, 1], got nan"`` when ``value`` is outside ``bounds``, else None."""
    if bounds.contains(value):
        return None
    kind = bounds.refusal(value) if bounds.integer else \
        "a finite number" + ("" if bounds == _FINITE else f" {bounds.describe()}")
    return f"{name} must be {kind}, got {value!r}"


AGGREGATE_BOUNDS: dict[str, Bounds] = {
    "success_rate": UNIT_CLOSED,
    "return_mean": _FINITE,
    "return_std": NON_NEGATIVE,
    "final_distance_mean": NON_NEGATIVE,
    "final_distance_std": NON_NEGATIVE,
    "ep_len_mean": Bounds(low=1),
    "ep_len_std": NON_NEGATIVE,
    "action_smoothness_mean": NON_NEGATIVE,
    "action_max_abs_mean": NON_NEGATIVE,
}
"""What each ``aggregate`` value can be on any task (a task's limits narrow the return, distance and length)."""


AGGREGATE_FIELDS = (
    "success_rate",
    "return_mean",
    "return_std",
    "final_distance_mean",
    "final_distance_std",
    "ep_len_mean",
    "ep_len_std",
    "action_smoothness_mean",
    "action_max_abs_mean",
)


def aggregate_episodes(episodes: list[EpisodeRecord]) -> dict[str, float]:
    """The eval JSON's ``aggregate`` block: means and population stds over episodes."""
    import numpy as np

    if not episodes:
        raise FetchRLError("no evaluation episodes to aggregate")
    ret = np.array([e.return_ for e in episodes], dtype=np.float64)
    dist = np.array([e.final_distance for e in episodes], dtype=np.float64)
    length = np.array([e.length for e in episodes], dtype=np.float64)
    return {
        "success_rate": float(np.mean([float(e.success) for e in episodes])),
        "return_mean": float(ret.mean()),
        "return_std": float(ret.std()),
        "final_distance_mean": float(dist.mean()),
        "final_distance_std": float(dist.std()),
        "ep_len_mean": float(length.mean()),
        "ep_len_std": float(length.std()),
        "action_smoothness_mean": float(np.mean([e.action_smoothness for e in episodes])),
        "action_max_abs_mean": float(np.mean([e.action_max_abs for e in episodes])),
    }


@dataclass
class EvalResult:
    """``results/ch02_ppo_<env>_seed<N>_eval.json``."""

    created_at: str
    algo: str
    env_id: str
    checkpoint: str
    device: str
    n_episodes: int
    seeds: list[int]
    deterministic: bool
    aggregate: dict[str, float]
    per_episode: list[EpisodeRecord]
    versions: dict[str, str]
    policy: str = "trained"
    """trained | random | zero — the baselines the report shows beside the policy."""
    eval_seconds: float = 0.0
    checkpoint_sha256: str = ""
    """sha256 of the checkpoint zip evaluated; ``report`` refuses the pair when the checkpoint changed
    since ("" for the baselines, and in eval JSONs written before fetchrl recorded it)."""
    checkpoint_created_at: str = ""
    """``created_at`` of that checkpoint's metadata: when the evaluated weights were written ("" if unknown)."""

    def to_dict(self) -> dict[str, object]:
        d = dataclasses.asdict(self)
        d["per_episode"] = [e.to_dict() for e in self.per_episode]
        return d

    def to_json(self, path: Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: JSONObject, path: Path = Path("<memory>")) -> EvalResult:
        result = _from_dict(cls, data, path, "eval JSON")
        if not isinstance(result.aggregate, dict) or not isinstance(result.per_episode, list):
            raise FetchRLError(f"eval JSON {path} has malformed aggregate/per_episode blocks")
        missing = [k for k in ("success_rate", "return_mean", "final_distance_mean") if k not in result.aggregate]
        if missing:
            raise FetchRLError(f"eval JSON {path} aggregate is missing field(s): {', '.join(missing)}")
        try:
            result.per_episode = [EpisodeRecord.from_dict(e) for e in data["per_episode"]]
        except (TypeError, KeyError, AttributeError) as err:
            raise FetchRLError(f"eval JSON {path} has a malformed per_episode row ({err})") from None
        problem = result.problem()
        if problem is not None:
            raise FetchRLError(f"eval JSON {path} is invalid: {problem}; evaluate again to rewrite it")
        return result

    def problem(self) -> str | None:
        """The first impossible value, or None. Checked: every aggregate value is a finite number in its
        range (:data:`AGGREGATE_BOUNDS`, narrowed by the task's :func:`episode_limits` when registered),
        every per-episode row is possible (:meth:`EpisodeRecord.problem`), the counts and seeds agree,
        and the aggregate equals the one recomputed from the rows (relative tolerance :data:`AGGREGATE_RTOL`).
        """
        limits = episode_limits(self.env_id) if isinstance(self.env_id, str) else None
        bounds = dict(AGGREGATE_BOUNDS)
        if limits is not None:
            bounds |= {"return_mean": limits.returns, "final_distance_mean": limits.distance,
                       "ep_len_mean": Bounds(low=1, high=limits.max_steps)}
        for name, value in self.aggregate.items():
            problem = _number_problem(f"aggregate.{name}", value, bounds.get(name, _FINITE))
            if problem is not None:
                return problem
        problem = _number_problem("n_episodes", self.n_episodes, POSITIVE_INT)
        if problem is not None:
            return problem
        if len(self.per_episode) != self.n_episodes or not isinstance(self.seeds, list) \
                or len(self.seeds) != self.n_episodes:
            return (f"n_episodes is {self.n_episodes} but there are {len(self.per_episode)} per_episode rows and "
                    f"{len(self.seeds) if isinstance(self.seeds, list) else self.seeds!r} seeds")
        for i, (row, seed) in enumerate(zip(self.per_episode, self.seeds, strict=True)):
            problem = row.problem(limits)
            if problem is None and row.seed != seed:
                problem = f"seed {row.seed} is not seeds[{i}] = {seed!r}"
            if problem is not None:
                return f"per_episode[{i}].{problem}"
        recomputed = aggregate_episodes(self.per_episode)
        for name, value in self.aggregate.items():
            if name in recomputed and not math.isclose(value, recomputed[name], rel_tol=AGGREGATE_RTOL,
                                                       abs_tol=1e-9):
                return (f"aggregate.{name} = {value!r} disagrees with its per_episode rows "
                        f"(which give {recomputed[name]!r})")
        return None

    @classmethod
    def from_json(cls, path: Path) -> EvalResult:
        return cls.from_dict(read_json(path, "eval JSON"), path)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_eval_freshness(result: EvalResult, paths: RunPaths) -> str | None:
    """Was ``paths.eval_json`` (read into ``result``) made from ``paths.checkpoint`` as it is on disk now?

    Returns None when it was, and a one-line warning when that cannot be told (an eval JSON written
    before fetchrl recorded the checkpoint's digest, or no checkpoint to compare with). Raises
    FetchRLError (exit 2), naming both files and the command to run, when it was made from another
    checkpoint: the seed was retrained after its evaluation.
    """
    if not result.checkpoint_sha256:
        return (f"{paths.eval_json} records no checkpoint digest (written by an older fetchrl): cannot verify it "
                f"was made from {paths.checkpoint}")
    if not paths.checkpoint.is_file():
        return f"{paths.checkpoint} is missing: cannot verify {paths.eval_json} was made from it"
    try:
        now = file_sha256(paths.checkpoint)
    except OSError as err:
        return f"cannot read {paths.checkpoint} ({err.strerror or err}): cannot verify {paths.eval_json}"
    if now != result.checkpoint_sha256:
        rerun = f"eval --seed {paths.seed}" + (f" --env-id {paths.env_id}" if paths.env_id != DEFAULT_ENV_ID else "") \
            + (f" --root {paths.root}" if paths.root != Path(".") else "")
        written = f", written {result.checkpoint_created_at}" if result.checkpoint_created_at else ""
        raise FetchRLError(f"{paths.eval_json} was made from another checkpoint than {paths.checkpoint} "
                           f"(sha256 {result.checkpoint_sha256[:12]}{written}; now {now[:12]}): the seed was "
                           f"retrained since; run `{rerun}` first")
    return None


@dataclass
class SeedSummary:
    seed: int
    success_rate: float
    return_mean: float
    final_distance_mean: float


class RliableEstimate(TypedDict):
    """One metric's IQM and mean over seeds, each with its 95 % stratified-bootstrap CI ([lo, hi])."""

    iqm: float
    iqm_ci: list[float]
    mean: float
    mean_ci: list[float]
    n_runs: int


@dataclass
class MultiSeedAggregate:
    """``results/ch02_ppo_reachdense_aggregate.json`` (and one per sweep configuration)."""

    created_at: str
    env_id: str
    algo: str
    seeds: list[int]
    per_seed: list[SeedSummary]
    aggregate: dict[str, float]
    config: dict[str, object] = field(default_factory=dict)
    """Hyper-parameters shared by all seeds (a sweep's configuration)."""
    rliable: dict[str, RliableEstimate] = field(default_factory=dict)
    """IQM and 95 % stratified-bootstrap CIs per metric (empty when too few seeds)."""

    def to_json(self, path: Path) -> None:
        write_json(path, dataclasses.asdict(self))

    @classmethod
    def from_json(cls, path: Path) -> MultiSeedAggregate:
        return cls.from_dict(read_json(path, "aggregate JSON"), path)

    @classmethod
    def from_dict(cls, data: JSONObject, path: Path, what: str = "aggregate JSON") -> MultiSeedAggregate:
        agg = _from_dict(cls, data, path, what)
        per_seed: list[JSONObject] = data["per_seed"]
        agg.per_seed = [SeedSummary(**s) for s in per_seed]
        return agg


def sweep_summary_path(name: str, root: Path = Path("."), names: ArtifactNames = DEFAULT_NAMES) -> Path:
    return root / "results" / f"{names.chapter}_sweep_{name}.json"


def sweep_plot_path(name: str, root: Path = Path("."), names: ArtifactNames = DEFAULT_NAMES) -> Path:
    return root / "results" / f"{names.chapter}_sweep_{name}.png"


@dataclass
class SettingSummary:
    """One configuration of a sweep or ablation, aggregated over its seeds."""

    tag: str
    overrides: Mapping[str, object]
    root: str
    aggregate: MultiSeedAggregate
    training: dict[str, float] = field(default_factory=dict)
    """Means over training of TensorBoard series (e.g. clip_fraction_mean, approx_kl_mean)."""
    failed_seeds: list[int] = field(default_factory=list)


@dataclass
class SweepSummary:
    """``results/ch02_ablation_<param>.json`` and ``results/ch02_sweep_<name>.json``."""

    created_at: str
    name: str
    env_id: str
    seeds: list[int]
    total_steps: int
    grid: Mapping[str, Sequence[object]]
    settings: list[SettingSummary]
    answers: dict[str, str] = field(default_factory=dict)
    """For the ablation: exercise 2.4's three questions answered from the numbers."""

    def to_json(self, path: Path) -> None:
        write_json(path, dataclasses.asdict(self))

    @classmethod
    def from_json(cls, path: Path) -> SweepSummary:
        data = read_json(path, "sweep JSON")
        summary = _from_dict(cls, data, path, "sweep JSON")
        settings: list[JSONObject] = data["settings"]
        summary.settings = [SettingSummary(**{**s, "aggregate": MultiSeedAggregate.from_dict(s["aggregate"], path,
                                                                                             "sweep JSON setting")})
                            for s in settings]
        return summary


def compare_json_path(seed: int, root: Path = Path("."), names: ArtifactNames = DEFAULT_NAMES) -> Path:
    """``results/ch03_compare_seed<N>.json``: the chapter's run beside the previous chapter's."""
    return root / "results" / f"{names.chapter}_compare_seed{seed}.json"


def compare_plot_path(seed: int, root: Path = Path("."), names: ArtifactNames = DEFAULT_NAMES) -> Path:
    """``results/ch03_compare_seed<N>.png``: both training success curves on one env-step axis."""
    return root / "results" / f"{names.chapter}_compare_seed{seed}.png"


@dataclass
class CompareCriterion:
    """One criterion of a run's own chapter: the final eval's value, and when training first met it."""

    name: str
    metric: str
    op: str
    threshold: float
    value: float
    """The final evaluation's ``aggregate[metric]`` (deterministic episodes)."""
    passed: bool
    steps_to_criterion: int | None
    """First logged env step whose *training* curve met the criterion (None: never, or not measured)."""
    training_curve: str
    """The TensorBoard tag read for it (stochastic training episodes), or ``"not measured during training"``."""


@dataclass
class CompareRun:
    """One side of ``results/ch03_compare_seed<N>.json``."""

    chapter: str
    algo: str
    checkpoint: str
    eval_json: str
    total_steps: int
    wall_time_s: float
    steps_per_second: float
    n_eval_episodes: int
    final: dict[str, float]
    """success_rate, return_mean, final_distance_mean of the final evaluation."""
    criteria: list[CompareCriterion]
    passed: bool
    """Every criterion of its own chapter passed."""
    mean_training_success: float
    """Mean training success rate over the first ``common_steps`` env steps: sample efficiency, higher is better."""


@dataclass
class CompareResult:
    """``results/ch03_compare_seed<N>.json``: two chapters' runs of one seed side by side."""

    created_at: str
    env_id: str
    seed: int
    common_steps: int
    """Env steps both runs trained: the span of ``mean_training_success``."""
    runs: list[CompareRun]
    note: str
    """What ``steps_to_criterion`` measures."""

    def to_json(self, path: Path) -> None:
        write_json(path, dataclasses.asdict(self))

    @classmethod
    def from_json(cls, path: Path) -> CompareResult:
        data = read_json(path, "compare JSON")
        out = _from_dict(cls, data, path, "compare JSON")
        runs: list[JSONObject] = data["runs"]
        out.runs = [CompareRun(**{**r, "criteria": [CompareCriterion(**c) for c in r["criteria"]]}) for r in runs]
        return out


def throughput_json_path(root: Path = Path("."), names: ArtifactNames = DEFAULT_NAMES) -> Path:
    """``results/ch03_throughput.json``: training steps/s per number of envs."""
    return root / "results" / f"{names.chapter}_throughput.json"


def throughput_plot_path(root: Path = Path("."), names: ArtifactNames = DEFAULT_NAMES) -> Path:
    """``results/ch03_throughput.png``: steps/s and speed-up against n_envs."""
    return root / "results" / f"{names.chapter}_throughput.png"


@dataclass
class ThroughputPoint:
    """One timed run: ``steps`` env steps after the warm-up, in ``seconds`` (the warm-up is not timed)."""

    n_envs: int
    steps: int
    seconds: float
    steps_per_second: float
    speedup: float
    """steps/s over the smallest n_envs' steps/s."""
    efficiency: float
    """speedup over the ideal (n_envs / smallest n_envs): 1 = linear scaling."""


@dataclass
class ThroughputResult:
    """``results/ch03_throughput.json``."""

    created_at: str
    algo: str
    env_id: str
    learning_starts: int
    """Warm-up steps (random actions, no gradient step) run before the clock starts, excluded."""
    timed_steps: int
    linear_below: float
    """Efficiency under which scaling counts as no longer linear."""
    points: list[ThroughputPoint]
    answer: str
    """The chapter's question, "where does scaling stop being linear?", answered from the points."""
    hyperparameters: dict[str, object] = field(default_factory=dict)

    def to_json(self, path: Path) -> None:
        write_json(path, dataclasses.asdict(self))

    @classmethod
    def from_json(cls, path: Path) -> ThroughputResult:
        data = read_json(path, "throughput JSON")
        out = _from_dict(cls, data, path, "throughput JSON")
        points: list[JSONObject] = data["points"]
        out.points = [ThroughputPoint(**p) for p in points]
        return out


# ============================================================================ treatment vs control arms (ch04)
def arms_compare_json_path(env_id: str, root: Path = Path("."), names: ArtifactNames = DEFAULT_NAMES) -> Path:
    """``results/ch04_compare_fetchpush-v4.json``: the chapter's two arms over seeds, with the claim's verdict."""
    return root / "results" / f"{names.chapter}_compare_{env_id.lower()}.json"


def arms_compare_plot_path(env_id: str, root: Path = Path("."), names: ArtifactNames = DEFAULT_NAMES) -> Path:
    """``results/ch04_compare_fetchpush-v4.png``: success per arm (95 % CI, every seed), training curves."""
    return root / "results" / f"{names.chapter}_compare_{env_id.lower()}.png"


#: What the arms compare's claim verdict can be: the CI of the difference is above, below or across the bar.
CLAIM_VERDICTS = ("PASS", "FAIL", "inconclusive")


@dataclass
class MeanCI:
    """One metric of one arm over seeds: mean, sample std and the 95 % Student-t CI of the mean.

    ``std`` and ``ci`` are None for one seed: no spread measured (JSON null, "not measured" in text).
    """

    mean: float
    std: float | None
    ci: list[float] | None
    """[low, high] of the 95 % CI of the mean (Student t, n - 1 degrees of freedom)."""
    n: int

    def problem(self, name: str, bounds: Bounds) -> str | None:
        """The first impossible value: the mean outside ``bounds`` (the metric's range), a negative std, a CI
        not around the mean. The CI itself may reach past the range: a t interval over few seeds does."""
        checks = [("mean", self.mean, bounds), ("std", self.std, NON_NEGATIVE)]
        if isinstance(self.ci, list) and len(self.ci) == 2:
            checks += [("ci low", self.ci[0], _FINITE), ("ci high", self.ci[1], _FINITE)]
        for what, value, within in checks:
            problem = None if value is None else _number_problem(f"{name} {what}", value, within)
            if problem is not None:
                return problem
        if not isinstance(self.n, int) or self.n < 1:
            return f"{name} n must be a positive integer, got {self.n!r}"
        if (self.std is None) != (self.n < 2) or (self.ci is None) != (self.n < 2):
            return f"{name}: std and ci are measured exactly when n >= 2 (n = {self.n}, std {self.std!r}, ci {self.ci!r})"
        if self.ci is not None and not (isinstance(self.ci, list) and len(self.ci) == 2
                                        and self.ci[0] <= self.mean <= self.ci[1]):
            return f"{name} ci must be [low, high] around the mean {self.mean!r}, got {self.ci!r}"
        return None


#: Each arm metric's possible values (success is a rate; an eval's mean return on a sparse task is <= 0).
ARM_METRIC_BOUNDS: dict[str, Bounds] = {"success_rate": UNIT_CLOSED, "return_mean": _FINITE,
                                        "final_distance_mean": NON_NEGATIVE}


@dataclass
class ArmSummary:
    """One arm of the compare (``sac_her`` or ``sac``) over its seeds, read from their eval JSONs."""

    algo: str
    """The arm's algorithm name, its artifacts' prefix: ``"sac_her"``."""
    title: str
    """``"SAC + HER"``."""
    per_seed: list[SeedSummary]
    stats: dict[str, MeanCI]
    """Per metric of :data:`ARM_METRIC_BOUNDS` (success_rate, return_mean, final_distance_mean)."""
    eval_jsons: list[str]


@dataclass
class ArmsDifference:
    """Treatment minus control success rate, in percentage points, with its 95 % Welch-t CI."""

    difference_pp: float
    ci_pp: list[float] | None
    """[low, high]; None when an arm has one seed (no spread measured: no interval)."""
    df: float | None
    """Welch–Satterthwaite degrees of freedom (None: no interval, or both arms without spread)."""
    method: str


@dataclass
class ArmsCompareResult:
    """``results/ch04_compare_<env>.json``: the treatment and control arms over the same seeds, and the claim."""

    created_at: str
    env_id: str
    chapter: str
    total_steps: dict[str, int]
    """Steps each arm trained (``{algo: steps}``)."""
    n_eval_episodes: int
    seeds: list[int]
    arms: list[ArmSummary]
    """[treatment, control]."""
    difference: ArmsDifference
    claim: str
    """``"HER − no-HER > 50 pp"``."""
    claim_threshold_pp: float
    verdict: str
    """One of :data:`CLAIM_VERDICTS`: PASS when the CI's low end is above the bar, FAIL when its high end is
    below it, inconclusive otherwise (also when no CI could be measured)."""
    gap_small: bool
    """The gap is small: the whole CI (or, without one, the difference) lies below the bar."""
    answer: str
    """The verdict in words, as the command prints it."""
    failed_trials: list[str] = field(default_factory=list)
    """Trials that failed in this command's sweep (left out of the statistics)."""

    def to_json(self, path: Path) -> None:
        problem = self.problem()
        if problem is not None:
            raise ValueError(f"not writing an invalid compare JSON: {problem}")
        write_json(path, dataclasses.asdict(self))

    @classmethod
    def from_json(cls, path: Path) -> ArmsCompareResult:
        data = read_json(path, "compare JSON")
        out = _from_dict(cls, data, path, "compare JSON")
        try:
            out.arms = [ArmSummary(**{**a, "per_seed": [SeedSummary(**s) for s in a["per_seed"]],
                                      "stats": {k: MeanCI(**v) for k, v in a["stats"].items()}})
                        for a in data["arms"]]
            out.difference = ArmsDifference(**data["difference"])
        except (TypeError, KeyError, AttributeError) as err:
            raise FetchRLError(f"compare JSON {path} has a malformed arm or difference block ({err})") from None
        problem = out.problem()
        if problem is not None:
            raise FetchRLError(f"compare JSON {path} is invalid: {problem}; run compare again to rewrite it")
        return out

    def problem(self) -> str | None:
        """The first impossible or inconsistent value, or None; the verdict must follow from the CI."""
        if len(self.arms) != 2:
            return f"expected 2 arms (treatment, control), got {len(self.arms)}"
        if self.verdict not in CLAIM_VERDICTS:
            return f"verdict must be one of {', '.join(CLAIM_VERDICTS)}, got {self.verdict!r}"
        for arm in self.arms:
            if set(arm.stats) != set(ARM_METRIC_BOUNDS):
                return f"arm {arm.algo} stats must have {', '.join(ARM_METRIC_BOUNDS)}, got {sorted(arm.stats)}"
            for name, bounds in ARM_METRIC_BOUNDS.items():
                problem = arm.stats[name].problem(f"arm {arm.algo} {name}", bounds)
                if problem is not None:
                    return problem
                values = [getattr(s, name) for s in arm.per_seed]
                if len(values) != arm.stats[name].n or not math.isclose(
                        sum(values) / max(1, len(values)), arm.stats[name].mean, rel_tol=AGGREGATE_RTOL, abs_tol=1e-9):
                    return f"arm {arm.algo} {name} mean disagrees with its per_seed rows"
        d = self.difference
        problem = _number_problem("difference_pp", d.difference_pp, Bounds(low=-100, high=100))
        if problem is not None:
            return problem
        expected = 100 * (self.arms[0].stats["success_rate"].mean - self.arms[1].stats["success_rate"].mean)
        if not math.isclose(d.difference_pp, expected, rel_tol=1e-6, abs_tol=1e-6):
            return f"difference_pp {d.difference_pp!r} is not the arms' success difference ({expected!r} pp)"
        if d.ci_pp is not None and not (isinstance(d.ci_pp, list) and len(d.ci_pp) == 2
                                        and d.ci_pp[0] <= d.difference_pp <= d.ci_pp[1]):
            return f"difference ci_pp must be [low, high] around {d.difference_pp!r}, got {d.ci_pp!r}"
        if self.verdict != claim_verdict(d.ci_pp, self.claim_threshold_pp):
            return (f"verdict {self.verdict!r} does not follow from the CI {d.ci_pp!r} and the bar "
                    f"{self.claim_threshold_pp!r} pp")
        return None


def claim_verdict(ci_pp: Sequence[float] | None, threshold_pp: float) -> str:
    """The claim "difference > threshold" judged by a 95 % CI: PASS when the whole CI is above the bar,
    FAIL (refuted) when it is wholly below, inconclusive when it straddles the bar or was not measured."""
    if ci_pp is None:
        return "inconclusive"
    if ci_pp[0] > threshold_pp:
        return "PASS"
    if ci_pp[1] < threshold_pp:
        return "FAIL"
    return "inconclusive"
