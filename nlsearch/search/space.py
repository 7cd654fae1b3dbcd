"""A declarative search space (``search_spaces/*.yaml``): what is searched, on which tasks, how judged.

A space file is a strict mapping (unknown keys are errors naming their path)::

    name: nesting_depth                 # the study's name and results/<name>/
    tasks: [recall_small]               # task refs; objectives name them as <task>:<metric>
    budget: cpu                         # a profile name, a budget YAML (relative to the file) or a mapping
    seeds: [0]                          # every trial trains each task with each seed; metrics are means
    trials: 16                          # finished trials wanted (complete, pruned or failed)
    objectives:                         # one (single objective) or more (a Pareto front)
      - {metric: recall_small:accuracy, direction: maximize}
    sampler: {kind: tpe}                # tpe | random | nsga2  (+ n_startup_trials)
    pruner: {kind: median}              # none | median | successive_halving | hyperband
    base: transformer                   # the model config params apply to: preset, YAML file or mapping
    fixed: {d_model: 128}               # merged into base before any param
    params:                             # searched dimensions, applied in order
      mixer: {choices: {attention: {kind: attention}, deltanet: {kind: memory, rule: deltanet}}}
      lr: {float: [3e-4, 3e-3], log: true, path: optimizer.lr}
      levels:                           # a repeated group: an int count, then each item's params
        repeat: [1, 5]
        path: mlp                       # where the group's lists go (items' paths are relative to it)
        each:
          period: {choices: [1, 4, 16, 64], path: periods}
          memory: {choices: [mlp, linear]}
      window: {int: [16, 128], when: {mixer: attention}, path: mixer.window}   # conditional
    match_params: {target: 400000, adjust: d_model, multiple_of: 16}          # optional
    constraints: {params: {min: 3.0e5, max: 5.0e5}, state_size: {max: 1.0e6}}
    enqueue: [{mixer: attention}]       # optional: candidates tried first (unnamed params are sampled)
    question: mixer                     # optional: the dimension the verdict compares (a param or a
    reference: attention                #   derived fact: nesting_depth, params, ...) and its reference value
    confirm: {top_k: 2, seeds: [0, 1, 2], lr_factors: [1.0], alpha: 0.05}   # the confirmation stage

A parameter's value lands at its ``path`` (dotted; default: its name) in the model config. A mapping
value is merged into what is there, except that a mapping whose ``kind`` differs from the existing
``kind`` replaces it (switching a mixer never inherits the old mixer's fields). ``path: .`` is the
config's root. Choices given as a mapping are labels → values: Optuna sees the labels.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Dict, List, Literal, Optional, Tuple, Union

from pydantic import (Discriminator, Field, NonNegativeInt, PositiveFloat, PositiveInt, Tag, field_validator,
                      model_validator)

from nlsearch.config import Seed, Strict, is_file_ref, parse_config, read_yaml_mapping

Scalar = Union[None, bool, int, float, str]
IntRange = Tuple[int, int]           # module-level names: the fields ``int``/``float`` shadow the builtins
FloatRange = Tuple[float, float]
Step = Union[PositiveInt, PositiveFloat]
MODEL_METRICS = ("params", "state_size", "tokens_per_s", "nesting_depth", "flops_per_token")
MAX_REPEAT = 64                      # items of a repeated group: each is a level or layer of the model
QUESTION_FACTS = ("nesting_depth", "params", "state_size", "flops_per_token")   # known before training


class Param(Strict):
    """One searched dimension: exactly one of ``choices``, ``int``, ``float``."""

    choices: Optional[Union[List[Any], Dict[str, Any]]] = None
    int: Optional[IntRange] = None
    float: Optional[FloatRange] = None
    log: bool = False
    step: Optional[Step] = None
    path: Optional[str] = None                       # default: the parameter's name
    when: Dict[str, Union[Scalar, List[Scalar]]] = {}   # sampled only when every named param matches

    @model_validator(mode="after")
    def _one_kind(self) -> "Param":
        given = [k for k in ("choices", "int", "float") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of choices, int, float (got {given or 'none'})")
        if self.choices is not None and len(self.choices) == 0:
            raise ValueError("choices is empty")
        if isinstance(self.choices, list) and any(isinstance(c, (dict, list)) for c in self.choices):
            raise ValueError("choices that are mappings or lists need labels: write choices as {label: value}")
        for key in ("int", "float"):
            bounds = getattr(self, key)
            if bounds is not None and bounds[0] > bounds[1]:
                raise ValueError(f"{key} range [{bounds[0]}, {bounds[1]}] has low > high")
            if bounds is not None and self.log and bounds[0] <= 0:
                raise ValueError(f"log scale needs a positive low bound, got {bounds[0]}")
        if self.log and self.step is not None:
            raise ValueError("step and log cannot be combined (Optuna samples a log range continuously)")
        return self

    @property
    def labels(self) -> List[Scalar]:
        """What Optuna samples for a categorical: the labels of a mapping, else the values."""
        return list(self.choices) if isinstance(self.choices, dict) else list(self.choices or [])

    def value(self, sampled: Any) -> Any:
        """The config value of a sampled Optuna value (a label's value for labelled choices)."""
        return self.choices[sampled] if isinstance(self.choices, dict) else sampled


class Group(Strict):
    """A repeated, conditional group: ``repeat`` items (an int param named like the group), each
    with the params of ``each``; item params are named ``<group>.<i>.<name>`` and their values are
    collected into one list per name, placed at ``path``/``<item path>``. With ≥ 1 item the mapping
    ``set`` is placed at ``path`` first (e.g. ``{kind: cms, clock: tokens}``); with 0 items nothing
    is placed and the base config stands."""

    repeat: Tuple[NonNegativeInt, NonNegativeInt]
    each: Dict[str, Param] = Field(min_length=1)
    path: str = ""
    set: Dict[str, Any] = {}                 # placed at ``path`` first, when the group has ≥ 1 item
    when: Dict[str, Union[Scalar, List[Scalar]]] = {}

    @field_validator("repeat")
    @classmethod
    def _ordered(cls, value):
        if value[0] > value[1]:
            raise ValueError(f"repeat [{value[0]}, {value[1]}] has min > max")
        if value[1] > MAX_REPEAT:
            raise ValueError(f"repeat [{value[0]}, {value[1]}]: at most {MAX_REPEAT} items (each is a layer or level "
                             f"of the model)")
        return value


def _param_or_group(value: Any) -> str:
    return "group" if isinstance(value, dict) and "repeat" in value else "param"


Dimension = Annotated[Union[Annotated[Param, Tag("param")], Annotated[Group, Tag("group")]],
                      Discriminator(_param_or_group)]


class Objective(Strict):
    metric: str                              # <task>:<metric> or a model metric (MODEL_METRICS)
    direction: Literal["maximize", "minimize"]

    @property
    def task(self) -> Optional[str]:
        return self.metric.split(":", 1)[0] if ":" in self.metric else None

    @property
    def name(self) -> str:
        return self.metric.split(":", 1)[1] if ":" in self.metric else self.metric


class SamplerSpec(Strict):
    kind: Literal["tpe", "random", "nsga2"] = "tpe"
    n_startup_trials: NonNegativeInt = 4


class PrunerSpec(Strict):
    kind: Literal["none", "median", "successive_halving", "hyperband"] = "median"
    n_startup_trials: NonNegativeInt = 3     # median: trials that are never pruned
    n_warmup_steps: NonNegativeInt = 0       # median: steps before pruning is considered
    min_resource: Optional[PositiveInt] = None   # successive_halving / hyperband (steps); None: auto
    reduction_factor: PositiveInt = 3


class Bound(Strict):
    min: Optional[float] = None
    max: Optional[float] = None


class MatchParams(Strict):
    """Set ``adjust`` (an int config field, e.g. ``d_model``) so the parameter count is closest to
    ``target``: equal-size comparisons between depth, loops and nesting."""

    target: PositiveInt
    adjust: str = "d_model"
    multiple_of: PositiveInt = 16
    low: PositiveInt = 16
    high: PositiveInt = 1024


class Confirm(Strict):
    """The confirmation stage after the search (``nlsearch.search.confirm``): the ``top_k`` best trials
    and the best trial of every value of the space's ``question`` are retrained with every seed of
    ``seeds`` on the budget's report eval set (not the selection set the search ranked on). With
    several ``lr_factors`` each finalist's learning rate is re-tuned first: every factor times its
    sampled lr on the first seed, the best (by the first objective) used for the other seeds."""

    top_k: PositiveInt = 2
    seeds: List[Seed] = Field([0, 1, 2], min_length=2)     # at least 2: a spread needs two runs
    lr_factors: List[PositiveFloat] = Field([1.0], min_length=1)
    alpha: float = Field(0.05, gt=0, lt=1)                 # the verdict's significance level (Welch's t)

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, value):
        if len(set(value)) != len(value):
            raise ValueError(f"seeds repeat: {value}")
        return value


class Resources(Strict):
    cpus_per_trial: PositiveInt = 1          # CPU workers: torch threads of a trial
    gpus_per_trial: float = Field(1.0, gt=0, le=8)   # when GPUs exist; < 1 shares a GPU between trials


class SearchSpace(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    tasks: List[str] = Field(min_length=1)
    budget: Union[str, Dict[str, Any]] = "cpu"
    seeds: List[Seed] = Field([0], min_length=1)
    trials: PositiveInt = 16
    timeout_minutes: Optional[PositiveFloat] = None
    objectives: List[Objective] = Field(min_length=1)
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()
    seed: int = Field(0, ge=0, lt=2 ** 32)   # the sampler's seed (numpy's range)
    base: Union[str, Dict[str, Any]] = "transformer"
    fixed: Dict[str, Any] = {}
    params: Dict[str, Dimension] = Field(min_length=1)
    match_params: Optional[MatchParams] = None
    constraints: Dict[Literal["params", "state_size", "nesting_depth", "flops_per_token"], Bound] = {}
    resources: Resources = Resources()
    enqueue: List[Dict[str, Scalar]] = []    # candidates tried first (e.g. the reference): param -> value or label
    question: Optional[str] = None           # the dimension the search answers: a param or a derived fact
    reference: Optional[Scalar] = None       # the question's reference value (e.g. the plain stacked model)
    confirm: Confirm = Confirm()
    source: Optional[str] = Field(None, exclude=True)   # the file it came from (for messages)

    @model_validator(mode="after")
    def _references(self) -> "SearchSpace":
        order = list(self.params)
        for name, spec in self.params.items():
            conditions = [(f"params.{name}.when", spec.when, order.index(name))]
            if isinstance(spec, Group):          # an item may depend on parameters declared before its group
                conditions += [(f"params.{name}.each.{item}.when", s.when, order.index(name)) for item, s in
                               spec.each.items()]
            for where, when, position in conditions:
                for other in when:
                    if other not in order or order.index(other) >= position:
                        raise ValueError(f"{where} names {other!r}, which is not a parameter declared before it")
        task_names = {task_label(t) for t in self.tasks}
        for i, obj in enumerate(self.objectives):
            if obj.task is None and obj.metric not in MODEL_METRICS:
                raise ValueError(f"objectives.{i}.metric {obj.metric!r}: write <task>:<metric> (tasks: "
                                 f"{sorted(task_names)}) or one of {list(MODEL_METRICS)}")
            if obj.task is not None and obj.task not in task_names:
                raise ValueError(f"objectives.{i}.metric {obj.metric!r}: task {obj.task!r} is not in tasks "
                                 f"{self.tasks}")
        names = set(self.params) | {f"{g}.{i}.{item}" for g, spec in self.params.items() if isinstance(spec, Group)
                                     for i in range(spec.repeat[1]) for item in spec.each}
        for i, point in enumerate(self.enqueue):
            unknown = sorted(set(point) - names)
            if unknown:
                raise ValueError(f"enqueue.{i}: {unknown} are not parameters of the space ({sorted(self.params)}; "
                                 f"a group's items are <group>.<i>.<name>)")
        if self.question is not None and self.question not in self.params and self.question not in QUESTION_FACTS:
            raise ValueError(f"question {self.question!r} is neither a parameter ({list(self.params)}) nor a derived "
                             f"quantity ({list(QUESTION_FACTS)})")
        if self.reference is not None and self.question is None:
            raise ValueError(f"reference {self.reference!r} needs a question (the dimension it is a value of)")
        if len(self.objectives) > 1 and self.pruner.kind != "none":
            raise ValueError("pruner: Optuna cannot prune a multi-objective study; set pruner: {kind: none}")
        return self

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def directions(self) -> List[str]:
        return [o.direction for o in self.objectives]


def objective_columns(space: SearchSpace) -> List[str]:
    """The trials table's column of each objective, in order."""
    return [f"objective:{o.metric}" for o in space.objectives]


def task_label(ref: str) -> str:
    """How objectives and result columns name a task: a spec file's stem, else the name before ``@``."""
    return Path(ref).stem if is_file_ref(ref) else ref.split("@")[0]


def load_space(path: Union[str, Path]) -> SearchSpace:
    """Reads and validates a space file; errors name the file and the key path. A budget or task given
    as a relative file path is resolved against the space file's folder."""
    path = Path(path)
    data = read_yaml_mapping(path)
    space = parse_config(SearchSpace, data, str(path))

    def resolved(ref):
        return str((path.parent / ref).resolve()) if is_file_ref(ref) and not Path(ref).is_absolute() else ref

    return space.model_copy(update={"source": str(path), "budget": resolved(space.budget),
                                    "tasks": [resolved(t) for t in space.tasks]})
