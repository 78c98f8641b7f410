"""The dataset: fetch the Roboflow zip, validate and label it, and write it to the store (`aquarium prepare`).

    source.py   fetch a local path, file://, http(s)://, s3:// or Google Drive source; sha256; safe extraction
    labels.py   read and validate `_annotations.csv`, label each image with its dominant class, synthesize
    prepare.py  orchestration: write images, labels, counts, fingerprint and tensors to the store, `_SUCCESS` last
"""

SPLITS = ("train", "valid", "test")
