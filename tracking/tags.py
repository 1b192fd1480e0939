"""The MLflow tag names a sweep writes (tracking/tune_callback.py) and the registry and the
API read back (tracking/registry.py, training/api/search.py): one spelling, in a module
that imports nothing, so readers need not import the callback (which imports Ray)."""

ROLE = "mrlfads.role"  # "sweep" on the parent run, "trial" on each trial's run
SWEEP = "mrlfads.sweep"  # the sweep's name
TRIAL_ID = "mrlfads.trial_id"
SWEEP_STATE = "mrlfads.sweep_state"  # on the parent: "finished" or "interrupted ..."
METRIC = "mrlfads.metric"  # what the sweep ranks on, and whether it minimises it
MODE = "mrlfads.mode"
CHECKPOINT = "mrlfads.checkpoint"  # a trial's latest checkpoint folder
