"""Exports of a finished sort for other tools.

- :mod:`shardsort.export.phy`: a phy / Kilosort folder (phy, phylib,
  SpikeInterface ``read_phy`` / ``read_kilosort``);
- :mod:`shardsort.export.nwb`: an NWB file (pynwb).

The submodules are imported explicitly so that one export does not pay for
the other's dependencies (pynwb is slow to import).
"""
