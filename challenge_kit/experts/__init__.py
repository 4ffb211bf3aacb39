"""Expert trajectories: ``training`` trains and resumes them, ``store`` reads a folder of them (the listing,
the complete experts, the trajectories matching draws from) and ``buffers`` converts DATM/MTT replay buffers.

One expert is one file, read by ``challenge_kit.core.expert_file``; callers import from the submodules.
"""
