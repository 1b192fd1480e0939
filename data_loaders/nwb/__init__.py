"""NWB -> Arrow ingestion (`mrlfads ingest`) and its inverse for demos and tests.

pynwb is imported lazily inside the functions, so importing this package stays cheap.
"""
from mrlfads.data_loaders.nwb.ingest import ingest
from mrlfads.data_loaders.nwb.options import IngestOptions

__all__ = ["IngestOptions", "dataset_to_nwb", "ingest", "write_nwb_from_arrays"]


def __getattr__(name):  # export pulls in pynwb: load it only when asked for
    if name in ("dataset_to_nwb", "write_nwb_from_arrays"):
        from mrlfads.data_loaders.nwb import export

        return getattr(export, name)
    raise AttributeError(name)
