//! Tests of the generated search parameters and compartments on real bodies (search.rs keeps
//! the tests of normalization and query parsing).

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod generated_tests {
    use crate::{FhirError, ResourceType, SearchQuery, index_entries_of};
    use serde_json::Value;
    use serde_json::json;

    fn parse(rtype: &str, name: &str, value: &str) -> Result<SearchQuery, FhirError> {
        SearchQuery::parse(
            ResourceType::parse(rtype).unwrap(),
            &[(name.to_owned(), value.to_owned())],
            false,
        )
    }

    fn matches(rtype: &str, body: &Value, name: &str, value: &str) -> bool {
        let entries = index_entries_of(ResourceType::parse(rtype).unwrap(), body);
        let q = parse(rtype, name, value).unwrap_or_else(|e| panic!("{name}={value}: {e}"));
        q.params[0].matches(&entries)
    }

    #[test]
    fn new_types_index_their_standard_parameters() {
        let claim = json!({"resourceType": "Claim", "status": "active",
            "use": "claim", "patient": {"reference": "Patient/p1"},
            "created": "2020-05-01T10:00:00Z", "provider": {"reference": "Organization/o1"},
            "priority": {"coding": [{"code": "normal"}]},
            "insurance": [{"sequence": 1, "focal": true, "coverage": {"reference": "Coverage/c1"}}],
            "item": [{"sequence": 1, "productOrService": {"coding": [
                {"system": "http://snomed.info/sct", "code": "185345009"}]}}]});
        assert!(matches("Claim", &claim, "patient", "p1"));
        assert!(matches("Claim", &claim, "created", "2020-05"));
        assert!(matches("Claim", &claim, "provider", "Organization/o1"));
        assert!(matches("Claim", &claim, "status", "active"));
        assert!(matches("Claim", &claim, "use", "claim"));
        assert!(!matches("Claim", &claim, "patient", "p2"));

        let goal = json!({"resourceType": "Goal", "lifecycleStatus": "active",
            "description": {"text": "x"}, "subject": {"reference": "Patient/p1"},
            "startDate": "2021-02-03"});
        assert!(matches("Goal", &goal, "lifecycle-status", "active"));
        assert!(matches("Goal", &goal, "start-date", "2021-02-03"));
        assert!(matches("Goal", &goal, "patient", "Patient/p1"));

        // A Period is a range (eq: within the search range); a boolean as a token; a uri
        // exactly.
        let enc = json!({"resourceType": "Encounter", "status": "finished",
            "class": {"code": "AMB"}, "subject": {"reference": "Patient/p1"},
            "period": {"start": "2019-01-01T08:00:00Z", "end": "2019-01-02"}});
        assert!(matches("Encounter", &enc, "date", "2019-01"));
        assert!(!matches("Encounter", &enc, "date", "2019-01-02"));
        assert!(matches("Encounter", &enc, "date", "ge2019-01-02"));
        assert!(matches("Encounter", &enc, "date", "le2019-01-01"));
        assert!(!matches("Encounter", &enc, "date", "sa2019-01-01"));
        assert!(matches("Encounter", &enc, "date", "ne2019-01-02"));
        assert!(!matches("Encounter", &enc, "date", "ne2019"));
        let p = json!({"resourceType": "Patient", "active": true,
            "address": [{"city": "Springfield", "line": ["1 Main St"]}],
            "telecom": [{"system": "email", "value": "a@b.example"}]});
        assert!(matches("Patient", &p, "active", "true"));
        assert!(!matches("Patient", &p, "active", "false"));
        assert!(matches("Patient", &p, "address", "springf"));
        assert!(matches("Patient", &p, "address-city", "Springfield"));
        assert!(matches("Patient", &p, "email", "a@b.example"));
        assert!(!matches("Patient", &p, "phone", "a@b.example"));
        let q = json!({"resourceType": "Questionnaire", "status": "active",
            "url": "http://q.example/Questionnaire/phq-9"});
        assert!(matches(
            "Questionnaire",
            &q,
            "url",
            "http://q.example/Questionnaire/phq-9"
        ));
        assert!(!matches(
            "Questionnaire",
            &q,
            "url",
            "http://q.example/Questionnaire"
        ));
        assert!(parse("Questionnaire", "url:below", "http://q.example").is_err());
    }

    #[test]
    fn unsupported_parameters_are_refused_precisely() {
        for (rtype, name, phrase) in [
            (
                "Observation",
                "code-value-quantity",
                "composite parameters are not supported",
            ),
            (
                "Observation",
                "code-value-concept",
                "composite parameters are not supported",
            ),
            ("Location", "near", "special parameters are not supported"),
            (
                "Patient",
                "deceased",
                "FHIRPath the server does not evaluate",
            ),
            ("Patient", "phonetic", "phonetic matching"),
        ] {
            match parse(rtype, name, "1") {
                Err(FhirError::BadSearchValue { param, message }) => {
                    assert_eq!(param, name);
                    assert!(message.contains(phrase), "{rtype}.{name}: {message}");
                }
                other => panic!("{rtype}.{name}: {other:?}"),
            }
            // Lenient handling ignores them like unknown parameters.
            let q = SearchQuery::parse(
                ResourceType::parse(rtype).unwrap(),
                &[(name.to_owned(), "1".to_owned())],
                true,
            )
            .unwrap();
            assert_eq!(q.ignored, [name]);
        }
        // The target types of a reference parameter bound its values.
        let err = parse("Claim", "patient", "Group/1").unwrap_err();
        assert!(
            err.to_string().contains("must reference a Patient"),
            "{err}"
        );
        let err = parse("Claim", "provider", "o1").unwrap_err();
        assert!(
            err.to_string().contains("target types (Practitioner"),
            "{err}"
        );
        let q = parse("Claim", "provider", "Organization/o1").unwrap();
        assert_eq!(q.params[0].any_of[0].value, "Organization/o1");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod schema_tests {
    use serde_json::json;

    #[test]
    fn descriptions_validate() {
        let v = crate::Validator::new().unwrap();
        for body in [
            json!({"resourceType": "Goal", "lifecycleStatus": "active",
                   "description": {"text": "walk daily"}, "subject": {"reference": "Patient/p"}}),
            json!({"resourceType": "DocumentReference", "status": "current",
                   "description": "discharge summary", "subject": {"reference": "Patient/p"},
                   "content": [{"attachment": {"contentType": "text/plain"}}]}),
            json!({"resourceType": "ImagingStudy", "status": "available",
                   "description": "chest", "subject": {"reference": "Patient/p"}}),
        ] {
            v.validate(body.clone(), None)
                .unwrap_or_else(|e| panic!("{body}: {e}"));
        }
        // Goal.description is required.
        assert!(
            v.validate(
                json!({"resourceType": "Goal", "lifecycleStatus": "active",
            "subject": {"reference": "Patient/p"}}),
                None
            )
            .is_err()
        );
    }
}
