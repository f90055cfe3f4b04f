"""Asks an edgefleet daemon's v2 API to classify a file with magika through NVIDIA's own tritonclient (HTTP),
unmodified: health, model metadata, then one inference with binary tensors in and out (tritonclient's default)
and one with JSON tensors. Prints the top class index of each, one per line.

usage: triton_client_check.py HOST:PORT FEATURES_FILE   (FEATURES_FILE: 2048 little-endian int32 values)"""
import sys

import numpy as np
import tritonclient.http as httpclient

url, features_file = sys.argv[1], sys.argv[2]
features = np.fromfile(features_file, dtype="<i4").reshape(1, 2048)
client = httpclient.InferenceServerClient(url=url)
assert client.is_server_live(), "not live"
assert client.is_model_ready("magika"), "magika not ready"
meta = client.get_model_metadata("magika")
output_name = meta["outputs"][0]["name"]
for binary in (True, False):
    inp = httpclient.InferInput("bytes", list(features.shape), "INT32")
    inp.set_data_from_numpy(features, binary_data=binary)
    out = httpclient.InferRequestedOutput(output_name, binary_data=binary)
    result = client.infer("magika", inputs=[inp], outputs=[out])
    scores = result.as_numpy(output_name)
    print(int(np.argmax(scores)))
