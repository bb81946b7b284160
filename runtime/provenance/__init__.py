"""C2PA provenance beside the pixels: c2pa (read manifests, the combined verdict, sign the
finding), hook (the row hook that adds the provenance columns to every scan row), commands
(`dfx c2pa`). c2pa-python is imported inside functions only."""
