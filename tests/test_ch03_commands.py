"""Chapter 3's own commands and what it added to the shared ones: ``compare``, ``throughput``,
``all --checkpoint-every``, and the SAC diagnostics a run now logs.

Real short runs through the real CLI (chapter 2: two 1,024-step PPO rollouts; chapter 3: 1,000 SAC steps,
200 of them random warm-up); files are read back with their schemas. Nothing of SB3 or MuJoCo is mocked.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fetchrl.artifacts import (
    CompareResult,
    EvalResult,
    RunPaths,
    ThroughputResult,
    TrainMeta,
    aggregate_episodes,
    compare_json_path,
    compare_plot_path,
    throughput_json_path,
    throughput_plot_path,
)
from fetchrl.chapters import CH02, CH03
from fetchrl.cli import main
from fetchrl.pipeline.report import baseline_note

ENV_ID = "FetchReachDense-v4"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CH03_SHORT = ["--total-steps", "1000", "--learning-starts", "200", "--n-envs", "2", "--buffer-size", "5000",
              "--batch-size", "64", "--n-eval-episodes", "3", "--no-progress", "--no-video"]
CH02_SHORT = ["--total-steps", "2048", "--n-envs", "2", "--n-steps", "512", "--batch-size", "64",
              "--n-eval-episodes", "3", "--no-progress", "--no-video"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _checkpoint_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records the step of every checkpoint written (its meta JSON is written right after the zip)."""
    written: list[int] = []
    original = TrainMeta.to_json

    def record(self: TrainMeta, path: Path) -> None:
        written.append(self.num_timesteps)
        original(self, path)

    monkeypatch.setattr(TrainMeta, "to_json", record)
    return written


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int], list[int]]:
    """Chapter 2's and chapter 3's `all` of seed 0 in one root, each with --checkpoint-every; the
    checkpoint steps each wrote."""
    out = tmp_path_factory.mktemp("compare")
    steps = []
    for chapter, args, every in ((CH02, CH02_SHORT, "1024"), (CH03, CH03_SHORT, "400")):
        with pytest.MonkeyPatch.context() as mp:
            written = _checkpoint_steps(mp)
            code = main(["all", "--root", str(out), "--checkpoint-every", every, *args], chapter)
        assert code == 1  # every stage ran; a short run does not pass
        steps.append(written)
    return out, steps[0], steps[1]


def test_all_writes_interim_checkpoints_in_every_chapter(root: tuple[Path, list[int], list[int]]) -> None:
    _, ch02_steps, ch03_steps = root
    assert ch02_steps == [1024, 2048]  # the rollout boundary after 1,024 steps, then the end
    assert ch03_steps == [400, 800, 1000]


def test_a_sac_run_diagnosis_has_the_sac_findings_from_its_diagnostics(root: tuple[Path, list[int], list[int]]) -> None:
    paths = CH03.paths(ENV_ID, 0, root[0])
    findings = {f["id"]: f for f in json.loads(paths.diagnosis_json.read_text())["findings"]}
    assert {"ent_coef_collapse", "critic_loss_diverges", "q_overestimation", "replay_health"} <= findings.keys()
    # logged by SACDiagnosticsCallback: not the "not logged" info a run without it gets
    assert findings["replay_health"]["severity"] == "ok"
    assert 0 < findings["replay_health"]["observed"]["fill"] <= 1
    assert findings["q_overestimation"]["observed"]["n"] >= 1


def test_compare_writes_both_runs_against_their_own_criteria(root: tuple[Path, list[int], list[int]],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "--root", str(root[0])], CH03) == 1  # neither short run passes
    out = capsys.readouterr().out
    assert "ch02 PPO: FAIL" in out and "ch03 SAC: FAIL" in out
    result = CompareResult.from_json(compare_json_path(0, root[0], CH03.artifacts))
    ppo, sac = result.runs
    assert (ppo.chapter, ppo.algo, sac.chapter, sac.algo) == ("ch02", "ppo", "ch03", "sac")
    assert [c.threshold for c in ppo.criteria] == [c.threshold for c in CH02.criteria]
    assert [c.threshold for c in sac.criteria] == [c.threshold for c in CH03.criteria]
    assert (ppo.total_steps, sac.total_steps, result.common_steps) == (2048, 1000, 1000)
    for run, chapter in ((ppo, CH02), (sac, CH03)):
        evaluated = EvalResult.from_json(chapter.paths(ENV_ID, 0, root[0]).eval_json)
        assert run.final["success_rate"] == evaluated.aggregate["success_rate"]
        assert run.wall_time_s > 0 and run.steps_per_second > 0 and 0 <= run.mean_training_success <= 1
        distance = next(c for c in run.criteria if c.metric == "final_distance_mean")
        assert distance.steps_to_criterion is None and distance.training_curve == "not measured during training"
        success = next(c for c in run.criteria if c.metric == "success_rate")
        assert success.training_curve == "rollout/success_rate" and success.steps_to_criterion is None
    assert "stochastic" in result.note
    assert compare_plot_path(0, root[0], CH03.artifacts).read_bytes()[:8] == PNG_MAGIC


def _make_passing(paths: RunPaths) -> None:
    """Rewrite an eval JSON as if every episode had succeeded close to the goal (the verdict's other branch)."""
    result = EvalResult.from_json(paths.eval_json)
    for e in result.per_episode:
        e.success, e.time_to_success, e.final_distance, e.return_ = True, 10, 0.005, -1.0
    result.aggregate = aggregate_episodes(result.per_episode)
    result.to_json(paths.eval_json)


def test_compare_exits_0_when_both_pass_and_2_naming_a_missing_run(root: tuple[Path, list[int], list[int]],
                                                                   tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(root[0], copy)
    _make_passing(CH02.paths(ENV_ID, 0, copy))
    assert main(["compare", "--root", str(copy)], CH03) == 1  # chapter 3's run still fails
    _make_passing(CH03.paths(ENV_ID, 0, copy))
    assert main(["compare", "--root", str(copy)], CH03) == 0
    capsys.readouterr()

    missing = CH03.paths(ENV_ID, 0, copy).eval_json
    missing.unlink()
    assert main(["compare", "--root", str(copy)], CH03) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(missing) in err and "ch03_sac_dense_reach.py all --seed 0" in err
    assert main(["compare", "--root", str(tmp_path / "empty"), "--seed", "3"], CH03) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ppo_FetchReachDense-v4_seed3" in err and "Traceback" not in err


def test_throughput_times_each_n_envs_and_answers_from_the_numbers(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["throughput", "--root", str(tmp_path), "--n-envs-list", "1,2", "--steps", "300",
                 "--learning-starts", "100"], CH03)
    assert code == 0
    result = ThroughputResult.from_json(throughput_json_path(tmp_path, CH03.artifacts))
    assert [p.n_envs for p in result.points] == [1, 2] and result.learning_starts == 100
    one, two = result.points
    assert all(250 <= p.steps <= 300 and p.seconds > 0 for p in result.points)  # the warm-up is not counted
    assert one.speedup == 1.0 and two.speedup == pytest.approx(two.steps_per_second / one.steps_per_second)
    assert two.efficiency == pytest.approx(two.speedup / 2)
    linear = two.efficiency >= result.linear_below
    assert result.answer.startswith("scaling stays near-linear" if linear else "scaling stops being linear at n_envs=2")
    assert result.answer in capsys.readouterr().out
    assert throughput_plot_path(tmp_path, CH03.artifacts).read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize(("args", "message"), [
    (["--n-envs-list", "2"], "at least two different env counts"),
    (["--n-envs-list", "0,2"], "--n-envs-list: expected a positive integer, got 0"),
    (["--n-envs-list", "1,x"], "--n-envs-list: expected a positive integer"),
    (["--steps", "0"], "--steps: expected a positive integer"),
    (["--learning-starts", "-1"], "--learning-starts: expected an integer >= 0"),
])
def test_throughput_bad_input_is_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["throughput", "--root", str(tmp_path), *args], CH03)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())


def test_baseline_note_words_each_chapters_return_threshold() -> None:
    assert "above the -10 threshold" in baseline_note(CH02.criteria)
    assert "-5 threshold" in baseline_note(CH03.criteria) and "-10" not in baseline_note(CH03.criteria)
