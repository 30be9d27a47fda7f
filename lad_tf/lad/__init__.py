"""The paper's method: the decoder G (Eq. 2), the attention-SVM boundaries, boundary-guided generation (Eq. 3) and fine-tuning on it (Eq. 4)."""
