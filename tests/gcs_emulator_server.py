"""`python tests/gcs_emulator_server.py start --host=127.0.0.1 --port=N ...`: gcp-storage-emulator, plus the
x-goog-generation / x-goog-metageneration headers that real GCS sends with every media download.

The emulator omits them, so TensorStore reads every object's generation as "unknown" and refuses the
conditional write of the next OCDBT manifest (Orbax's array store) with "Malformed StorageGeneration".
"""
import sys

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_download = objects.download


def download(request, response, storage, *args, **kwargs):
    _download(request, response, storage, *args, **kwargs)
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except NotFound:
        return
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj["metageneration"])


objects.download = download  # before the server module builds its routing table

from gcp_storage_emulator.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
