"""minigpt/studies/sweep/arms.py: arms of a sweep compared (paired and Welch intervals, seeds needed, ranking)."""

import math

import pytest
from scipy import stats

from helpers import arms_sweep, arms_text, table_rows, write_arm_job
from minigpt.studies.sweep.arms import (
    Arm,
    Difference,
    compare_sweep,
    paired_difference,
    rank_arms,
    seeds_needed,
    t_quantile,
    welch_difference,
)
from minigpt.studies.sweep.jobs import find_jobs


# A seed effect shared by every arm (the same seed: the same initialisation, batches and validation
# windows), much larger than the differences between arms.
SEED_EFFECT = {1: 0.00, 2: 0.047, 3: -0.021, 4: 0.030}


def test_paired_and_welch_intervals_are_scipys():
    a = [4.21, 4.25, 4.19, 4.30, 4.23]
    b = [4.25, 4.31, 4.22, 4.33, 4.29]
    d = paired_difference(a, b)
    ref = stats.ttest_rel(a, b)
    low, high = ref.confidence_interval(0.95)
    diffs = [x - y for x, y in zip(a, b)]
    assert d.method == "paired" and d.n == 5
    assert d.mean == pytest.approx(sum(diffs) / 5) and d.sd == pytest.approx(stats.tstd(diffs))
    assert (d.low, d.high) == (pytest.approx(low), pytest.approx(high))
    assert (d.low, d.high) == pytest.approx(stats.t.interval(0.95, 4, loc=d.mean, scale=stats.sem(diffs)))
    assert d.verdict == "better" and high < 0  # every seed lower: the interval is clear of 0
    w = welch_difference(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert w.method == "Welch" and (w.low, w.high) == (pytest.approx(ref.low), pytest.approx(ref.high))
    assert w.verdict == "within noise"  # the same numbers unpaired: the seed spread swamps 0.04 nats
    assert paired_difference([4.2], [4.3]).verdict == "no interval"
    assert t_quantile(4) == pytest.approx(stats.t.ppf(0.975, 4))


def test_seeds_needed_is_where_the_half_width_reaches_the_difference():
    def half_width(k, sd, paired):  # of the 95% interval with k seeds per arm
        return stats.t.ppf(0.975, k - 1 if paired else 2 * (k - 1)) * sd * math.sqrt((1 if paired else 2) / k)

    for sd, d, paired in ((0.02, 0.01, True), (0.02, 0.01, False), (0.047, 0.012, False), (0.005, 0.05, True)):
        n = seeds_needed(sd, d, paired)
        assert half_width(n, sd, paired) <= d and (n == 2 or half_width(n - 1, sd, paired) > d), (sd, d, paired, n)
    assert seeds_needed(0.02, 0.01, True) == 18  # (t sd / d)^2 with t(17) = 2.11: 17.8
    assert seeds_needed(0.02, 0.01, False) == 32  # 2 (t sd / d)^2 with t(62) = 1.999: 31.97
    assert seeds_needed(0.02, 0.0, True) is None and seeds_needed(0.0, 0.01, False) == 2


def test_a_clear_winner_is_better_and_a_noise_level_difference_is_within_noise(tmp_path):
    noise = {1: 0.004, 2: -0.003, 3: 0.001, 4: -0.002}  # 0.000 on average: linear is cosine, give or take
    sweep = arms_sweep(tmp_path / "sweep", {
        "cosine_warmup": {s: 4.20 + e for s, e in SEED_EFFECT.items()},
        "wsd": {s: 4.15 + e + 0.5 * noise[s] for s, e in SEED_EFFECT.items()},  # 0.05 lower on every seed
        "linear": {s: 4.20 + e + noise[s] for s, e in SEED_EFFECT.items()},
    })
    comparisons, differ = compare_sweep(find_jobs(sweep), baseline="scheduler=cosine_warmup")
    (c,) = comparisons
    assert differ == [] and c.baseline.label == "scheduler=cosine_warmup" and c.baseline_named
    wsd, linear = c.differences["scheduler=wsd"], c.differences["scheduler=linear"]
    assert wsd.method == "paired" and wsd.n == 4 and wsd.verdict == "better" and wsd.high < 0
    assert wsd.mean == pytest.approx(-0.05, abs=0.002)
    assert linear.verdict == "within noise" and linear.low < 0 < linear.high
    # the arms' own numbers
    arms = {a.label: a for a in c.arms}
    cos = list(arms["scheduler=cosine_warmup"].finals().values())
    assert arms["scheduler=cosine_warmup"].n == 4 and arms["scheduler=cosine_warmup"].mean == pytest.approx(
        sum(cos) / 4) and arms["scheduler=cosine_warmup"].sd == pytest.approx(stats.tstd(cos))
    # wsd alone on top; cosine and linear tie (linear's interval against cosine includes 0)
    assert c.ranks["scheduler=wsd"] == "1" and {c.ranks["scheduler=cosine_warmup"], c.ranks["scheduler=linear"]} == {
        "2", "=2"}
    # the seeds are shared, so pairing removes the seed effect: unpaired, wsd would not be resolved
    assert welch_difference(list(arms["scheduler=wsd"].finals().values()), cos).verdict == "within noise"

    text = arms_text(sweep, baseline="scheduler=cosine_warmup")
    rows = {r[1]: r for r in table_rows(text, "seeds to resolve it")}
    assert rows["scheduler=wsd"][0] == "1" and rows["scheduler=wsd"][8] == "better"
    assert rows["scheduler=linear"][8] == "within noise" and rows["scheduler=linear"][0].startswith("=")
    assert rows["scheduler=cosine_warmup (baseline)"][8] == "baseline"
    assert rows["scheduler=wsd"][7] == f"[{wsd.low:+.4f}, {wsd.high:+.4f}]"
    assert rows["scheduler=wsd"][9].startswith("paired, 4 seeds")
    assert rows["scheduler=wsd"][5] == "0.0040"  # eval s.e.: the final evaluations' standard error
    assert "eval s.e. 0.0028" in rows["scheduler=wsd"][9]  # sqrt(4 x 2 x 0.004^2) / 4
    assert "- seeds needed to resolve a difference of 0.01 nats:" in text


def test_the_issues_sweep_three_schedules_two_seeds_is_a_tie(tmp_path):
    """3 schedules x 2 seeds: cosine's seeds 0.047 apart, the means within 0.012: no difference."""
    sweep = arms_sweep(tmp_path / "sweep", {"constant_warmup": {1: 4.232, 2: 4.262}, "cosine_warmup": {1: 4.215, 2: 4.262},
                                            "wsd": {1: 4.226, 2: 4.259}})
    text = arms_text(sweep)
    rows = {r[1]: r for r in table_rows(text, "seeds to resolve it")}
    assert rows["scheduler=cosine_warmup (baseline)"][0] == "1"
    assert rows["scheduler=wsd"][0] == rows["scheduler=constant_warmup"][0] == "=1"
    assert all(r[8] == "within noise" for k, r in rows.items() if "baseline" not in k)
    assert "Within noise of it" in text and "sharing its rank: constant_warmup" not in text
    assert "sharing its rank: scheduler=constant_warmup, scheduler=wsd." in text


def test_seeds_not_shared_fall_back_to_welch(tmp_path):
    sweep = arms_sweep(tmp_path / "sweep", {"cosine_warmup": {1: 4.20, 2: 4.25, 3: 4.22},
                                            "wsd": {4: 4.10, 5: 4.12, 6: 4.09}})
    (c,), _ = compare_sweep(find_jobs(sweep))
    d = c.differences["scheduler=cosine_warmup"]
    ref = stats.ttest_ind([4.20, 4.25, 4.22], [4.10, 4.12, 4.09], equal_var=False).confidence_interval(0.95)
    assert d.method == "Welch" and (d.low, d.high) == (pytest.approx(ref.low), pytest.approx(ref.high))
    assert d.verdict == "worse" and "seeds not shared" in d.note
    text = arms_text(sweep)
    row = {r[1]: r for r in table_rows(text, "seeds to resolve it")}["scheduler=cosine_warmup"]
    assert row[9].startswith("Welch (seeds not shared)") and row[8] == "worse"


def test_runs_that_do_not_compare_are_split_naming_the_keys(tmp_path):
    root = tmp_path / "sweep"
    for i, (sched, width, steps) in enumerate([("cosine_warmup", 32, 100), ("wsd", 32, 100), ("cosine_warmup", 64, 100),
                                               ("wsd", 64, 100), ("wsd", 32, 200)]):
        for seed in (1, 2):
            write_arm_job(root, f"{i}_{seed}", {"scheduler": sched, "model.n_embd": width, "trainer.max_steps": steps},
                          seed, 4.0 + 0.01 * i + 0.02 * seed, model={"n_embd": width}, max_steps=steps)
    comparisons, differ = compare_sweep(find_jobs(root))
    assert differ == ["model.n_embd", "tokens trained"]
    assert [c.setting.values for c in comparisons] == [
        {"model.n_embd": "32", "tokens trained": "12,800"}, {"model.n_embd": "64", "tokens trained": "12,800"},
        {"model.n_embd": "32", "tokens trained": "25,600"}]
    assert [[a.label for a in c.arms] for c in comparisons] == [["scheduler=cosine_warmup", "scheduler=wsd"]] * 2 + [
        ["scheduler=wsd model.n_embd=32 trainer.max_steps=200"]]  # one arm: named by all its overrides
    text = arms_text(root)
    assert "**Not one ranking**: these jobs differ in model.n_embd (32, 64); tokens trained (12,800, 25,600)" in text
    assert "### model.n_embd=64, tokens trained 12,800" in text
    assert text.count("**Lowest mean:") == 2  # the third setting has one arm: nothing to rank
    # the data too: another corpus is another setting
    other = tmp_path / "data"
    write_arm_job(other, "a", {"scheduler": "wsd"}, 1, 4.0)
    write_arm_job(other, "b", {"scheduler": "wsd", "data.name": "mine"}, 1, 3.0, data={"name": "mine"})
    assert compare_sweep(find_jobs(other))[1] == ["data.name"]


def test_ranking_shows_ties_tier_by_tier():
    arms = [Arm(x, {}, []) for x in "abcd"]
    means = {"a": 1.0, "b": 1.1, "c": 1.5, "d": 1.6}
    within = {("b", "a"), ("d", "c")}
    for arm in arms:
        arm.finals = lambda arm=arm: {"1": means[arm.label], "2": means[arm.label]}

    def diff(arm, leader):
        noise = (arm.label, leader.label) in within
        return Difference(0.1, -0.1 if noise else 0.05, 0.2, "paired", 2)

    assert rank_arms(arms, diff) == {"a": "1", "b": "=1", "c": "3", "d": "=3"}
    untested = lambda arm, leader: Difference(0.1, method="none")  # noqa: E731
    assert rank_arms(arms, untested) == {"a": "1?", "b": "2?", "c": "3?", "d": "4?"}
