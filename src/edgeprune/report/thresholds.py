"""Every threshold a verdict compares against, and the judgements made with them, in one place.

The export report (`rules`), the sweep summary (`sweep_rules`) and `edgeprune bench`
(`bench_rules`) all judge through one `Thresholds`: what counts as chance accuracy, noisy
timings, a speedup outside the noise, too few samples for a percentile, or a good enough INT8
engine is decided here and nowhere else. Accuracies are fractions in [0, 1]; tolerances on them
are in percentage points.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence

from edgeprune.measure.stats import MIN_SAMPLES

#: Samples needed for an upper bound on p99 / p90 at 99% confidence (MEASURING.md, LoadGen).
MIN_SAMPLES_P99 = MIN_SAMPLES["p99"]
MIN_SAMPLES_P90 = MIN_SAMPLES["p90"]

#: Slack for a figure exactly at a threshold (float rounding of counts like 229/256, not statistics).
EPS = 1e-9

#: What `Thresholds.judge_speedup` can say about a measured speedup.
SPEEDUP_JUDGEMENTS = ("faster", "within_noise", "slower", "no_noise_estimate")


@dataclass(frozen=True)
class Thresholds:
    """The numbers every rule compares against, so reports can print them beside the verdict."""

    accuracy_tolerance_points: float = 1.0
    accuracy_fail_points: float = 5.0
    chance_margin_points: float = 3.0
    chance_margin_fraction_of_chance: float = 0.25
    keep_tolerance: float = 0.005
    timing_cv_max: float = 0.10
    gpu_channel_multiple: int = 8
    #: An INT8 engine may move logits but must keep FP32's decisions and accuracy.
    int8_min_top1_agreement: float = 0.95
    int8_max_accuracy_drop_points: float = 1.0
    #: Fine-tuned pruned models this far above dense (and outside their seed interval) mean
    #: the dense baseline was under-trained.
    beats_dense_points: float = 2.0
    #: Above this share of frozen parameters pruning could only touch a minority of the model.
    mostly_frozen_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.accuracy_tolerance_points < 0 or self.keep_tolerance < 0 or self.timing_cv_max <= 0:
            raise ValueError("tolerances must be non-negative and timing_cv_max positive")
        if self.accuracy_fail_points < self.accuracy_tolerance_points:
            raise ValueError("accuracy_fail_points must be at least accuracy_tolerance_points")
        if self.gpu_channel_multiple < 1:
            raise ValueError("gpu_channel_multiple must be at least 1")
        if not 0.0 < self.int8_min_top1_agreement <= 1.0:
            raise ValueError("int8_min_top1_agreement must be in (0, 1]")
        if self.int8_max_accuracy_drop_points < 0 or self.beats_dense_points < 0:
            raise ValueError("int8_max_accuracy_drop_points and beats_dense_points must be non-negative")

    def to_dict(self) -> dict:
        return asdict(self)

    # --- accuracy ----------------------------------------------------------------------------

    def chance_margin(self, chance: float) -> float:
        """How far above chance (as a fraction) an accuracy must be to count as learned."""
        return max(self.chance_margin_points / 100.0, self.chance_margin_fraction_of_chance * chance)

    def looks_untrained(self, accuracy: float, chance: float) -> bool:
        """An accuracy no more than `chance_margin` above chance: the model never learned."""
        return accuracy <= chance + self.chance_margin(chance)

    def beats_dense(self, pruned: float, dense: float, pruned_ci_low: Optional[float] = None) -> bool:
        """A pruned model above dense by more than `beats_dense_points` and, when its seed
        interval is known, with the whole interval above dense: more than the noise."""
        if (pruned - dense) * 100.0 <= self.beats_dense_points:
            return False
        return pruned_ci_low is None or pruned_ci_low > dense

    def int8_problems(self, top1_agreement: Optional[float], drop_points: Optional[float]) -> list[str]:
        """Why an INT8 engine fails its rule (empty when it passes): its top-1 agreement with
        FP32 and its accuracy drop against the FP32 model, each against its threshold."""
        found = []
        if top1_agreement is not None and top1_agreement < self.int8_min_top1_agreement - EPS:
            found.append(f"top-1 agreement with FP32 {top1_agreement * 100:.1f}% is under "
                         f"{self.int8_min_top1_agreement * 100:.0f}%")
        if drop_points is not None and drop_points > self.int8_max_accuracy_drop_points + EPS:
            found.append(f"accuracy {drop_points:.1f} points below FP32, more than "
                         f"{self.int8_max_accuracy_drop_points:.1f}")
        return found

    # --- timing ------------------------------------------------------------------------------

    def is_noisy(self, cv: float) -> bool:
        """A coefficient of variation over `timing_cv_max`: the timings are unreliable."""
        return cv > self.timing_cv_max

    def judge_speedup(self, speedup: float, ci95: Optional[Sequence[float]] = None,
                      cv: Optional[float] = None) -> str:
        """One of `SPEEDUP_JUDGEMENTS`. Within noise: the 95% interval includes 1.0; only
        without an interval does the timing CV stand in for it (|speedup - 1| under that CV)."""
        if ci95 is not None:
            within = ci95[0] <= 1.0 <= ci95[1]
        elif cv is not None:
            within = abs(speedup - 1.0) < cv
        else:
            return "no_noise_estimate" if speedup >= 1.0 else "slower"
        if within:
            return "within_noise"
        return "slower" if speedup < 1.0 else "faster"


def comparison_cv(round_median_cv: Optional[float], iteration_cv: Optional[float]) -> Optional[float]:
    """The CV that says whether a comparison can be trusted: of the per-round medians when
    recorded (what the interleaved comparison uses), else of the single iterations."""
    return round_median_cv if round_median_cv is not None else iteration_cv


DEFAULT_THRESHOLDS = Thresholds()
