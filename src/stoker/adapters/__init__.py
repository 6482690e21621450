"""Adapters hand a loader's batches to a framework: Keras (``keras.py``), tf.data
(``tf.py``), PyTorch (``torch.py``); JAX takes the loader's numpy batches as they are."""
