-- phivault schema v7: every patient an audit entry concerns, for the access-log queries.
-- An entry's body names its patient (patient_id) and, since v7, every other patient whose
-- data its response returned or who was decided on (the body's `patients` list: a search, a
-- Bundle, $everything). audit_entry_patients holds one row per (entry, patient) of that set,
-- copied out of the body like audit_entries.patient; queries by patient go through it, and
-- verification compares each entry's rows with its body (a row removed or added there is
-- named as a tampered entry). Ids only, never PHI values.
CREATE TABLE audit_entry_patients (
    seq BIGINT NOT NULL,
    patient TEXT NOT NULL,
    PRIMARY KEY (seq, patient)
);
CREATE INDEX audit_entry_patients_patient ON audit_entry_patients (patient, seq);
-- Entries written before v7 concern at most their one patient.
INSERT INTO audit_entry_patients (seq, patient)
    SELECT seq, patient FROM audit_entries WHERE patient IS NOT NULL;
