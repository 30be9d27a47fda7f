"""Export for TensorFlow Serving, a server speaking TF Serving's API, and a client."""
