"""Task data: deterministic generators of token sequences with targets and a scoring mask, and the
frozen, versioned specs in the top-level ``tasks/`` folder that name them."""
from nlsearch.tasks.batch import IGNORE, TaskBatch, TaskContext
from nlsearch.tasks.corpus import Corpus, CorpusSpec, load_corpus
from nlsearch.tasks.metrics import accuracy_by, gem_acc, gem_bwt, gem_fwt, gem_metrics, masked_accuracy
from nlsearch.tasks.spec import Phase, Task, TaskSpec, list_tasks, load_task, read_spec

__all__ = ["IGNORE", "TaskBatch", "TaskContext", "Corpus", "CorpusSpec", "load_corpus", "accuracy_by", "gem_acc",
           "gem_bwt", "gem_fwt", "gem_metrics", "masked_accuracy", "Phase", "Task", "TaskSpec", "list_tasks",
           "load_task", "read_spec"]
