"""A run's lifecycle and safety, the same for every recipe: the launch checks (launch.py), the lock on output_dir
(folder_lock.py), which checkpoint verifies and is resumed (checkpoints.py, resume.py), relaunching on another process
count (elastic.py), stopping on a signal (signals.py), no non-finite update or save (finite.py), a full disk said
(disk.py), the steps both training recipes share (steps.py), and how every command ends on an error (commands.py).

What changes here: how runs start, stop, save and resume. What does not: anything about SimPO or SFT themselves
(simpo/train/, simpo/sft/) or what a run prints (simpo/reporting/)."""
