//! Searches that combine a selective test with unselective ones (`subject` with `status`,
//! `code`, a date range, `_id`), against an oracle on the plain values: on SQLite the most
//! selective test gives the candidates and the others probe the index for each of them, and
//! whatever drives, the result set and the total must be the oracle's (both backends).

use std::collections::BTreeSet;

use super::*;

/// One stored Observation's plain values.
struct Obs {
    id: String,
    subject: usize,
    code: &'static str,
    status: &'static str,
    day: u8,
}

const CODES: [&str; 3] = ["8867-4", "8310-5", "29463-7"];
const STATUSES: [&str; 2] = ["final", "amended"];

#[tokio::test]
async fn mixed_selectivity_searches_equal_the_oracle() {
    let obs_type = ResourceType::parse("Observation").unwrap();
    for f in fixtures().await {
        let s = &f.store;
        let mut patients = Vec::new();
        for i in 0..4 {
            let p = s
                .create(valid(patient(&format!("Plan{i}"), "Pat")), &NoAudit)
                .await
                .unwrap();
            patients.push(p.id);
        }
        // Unselective values for most (status final, the first code), a few rarer ones.
        let mut stored = Vec::new();
        for n in 0..60usize {
            let subject = n % patients.len();
            let code = CODES[usize::from(n % 7 == 0) + usize::from(n % 11 == 0)];
            let status = STATUSES[usize::from(n % 5 == 0)];
            let day = u8::try_from(n % 28).unwrap() + 1;
            let mut body = observation(&patients[subject], code);
            body["status"] = json!(status);
            body["effectiveDateTime"] = json!(format!("2024-03-{day:02}T10:00:00Z"));
            let r = s.create(valid(body), &NoAudit).await.unwrap();
            stored.push(Obs {
                id: r.id.as_str().to_owned(),
                subject,
                code,
                status,
                day,
            });
        }
        let some_ids = [&stored[3].id, &stored[8].id, &stored[20].id, &stored[41].id];
        let chosen: BTreeSet<String> = some_ids.iter().map(|id| (*id).clone()).collect();
        type Pred = Box<dyn Fn(&Obs) -> bool>;
        let cases: Vec<(Vec<(String, String)>, Pred)> = vec![
            (
                vec![
                    ("subject".into(), format!("Patient/{}", patients[1])),
                    ("status".into(), "final".into()),
                ],
                Box::new(|o| o.subject == 1 && o.status == "final"),
            ),
            (
                vec![
                    ("status".into(), "final".into()),
                    ("code".into(), format!("http://loinc.org|{}", CODES[0])),
                    ("subject".into(), format!("Patient/{}", patients[2])),
                    ("date".into(), "ge2024-03-10".into()),
                ],
                Box::new(|o| {
                    o.status == "final" && o.code == CODES[0] && o.subject == 2 && o.day >= 10
                }),
            ),
            (
                vec![
                    ("code".into(), CODES[2].into()),
                    ("status".into(), "final,amended".into()),
                ],
                Box::new(|o| o.code == CODES[2]),
            ),
            (
                vec![
                    ("subject".into(), format!("Patient/{}", patients[3])),
                    ("date".into(), "ne2024-03-04".into()),
                    ("code".into(), format!("{},{}", CODES[1], CODES[2])),
                ],
                Box::new(|o| o.subject == 3 && o.day != 4 && o.code != CODES[0]),
            ),
            (
                vec![
                    ("_id".into(), some_ids.map(String::as_str).join(",")),
                    ("status".into(), "final".into()),
                    ("code".into(), CODES[0].into()),
                ],
                Box::new(move |o| {
                    chosen.contains(&o.id) && o.status == "final" && o.code == CODES[0]
                }),
            ),
            (
                vec![
                    ("status".into(), "amended".into()),
                    ("subject".into(), "Patient/nobody".into()),
                ],
                Box::new(|_| false),
            ),
        ];
        let mut discriminating = 0;
        for (params, pred) in cases {
            let mut pairs = params.clone();
            pairs.push(("_count".into(), "1000".into()));
            let q = SearchQuery::parse(obs_type, &pairs, false).unwrap();
            let page = s.search(obs_type, &q).await.unwrap();
            let got: BTreeSet<String> = page
                .resources
                .iter()
                .map(|r| r.id.as_str().to_owned())
                .collect();
            let expected: BTreeSet<String> = stored
                .iter()
                .filter(|o| pred(o))
                .map(|o| o.id.clone())
                .collect();
            assert_eq!(got, expected, "{} {params:?}", f.label);
            assert_eq!(page.total, expected.len() as u64, "{} {params:?}", f.label);
            // Paging a driven search: the second item alone.
            if expected.len() > 1 {
                discriminating += 1;
                let mut paged = params.clone();
                paged.push(("_count".into(), "1".into()));
                paged.push(("_offset".into(), "1".into()));
                let q = SearchQuery::parse(obs_type, &paged, false).unwrap();
                let page = s.search(obs_type, &q).await.unwrap();
                assert_eq!(page.total, expected.len() as u64, "{}", f.label);
                assert_eq!(page.resources.len(), 1);
                assert_eq!(
                    page.resources[0].id.as_str(),
                    expected.iter().nth(1).unwrap(),
                    "{} results are ordered by id",
                    f.label
                );
            }
        }
        assert!(discriminating >= 3, "{discriminating}");
    }
}
