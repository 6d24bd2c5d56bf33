-- A domain's own recognize threshold, when its model's calibrated one does not fit its gallery:
-- set by import-deepface for a gallery DeepFace embedded (deepface_calibrate.py), or by hand.
-- NULL: the model's threshold (FACESEARCH_THRESHOLD or the model's default). Cleared when the
-- domain changes model: a threshold belongs to one model's distances.
ALTER TABLE domains ADD COLUMN recognize_threshold real
    CHECK (recognize_threshold >= 0 AND recognize_threshold <= 2);
