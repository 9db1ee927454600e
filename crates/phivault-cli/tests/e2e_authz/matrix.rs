//! The authorization matrix: every cell's expected answer.

/// The expected answer of every cell, derived from the policy semantics
/// (crates/phivault-policy/policies/default.cedar and DESIGN.md "Authorization"):
///
/// - each role asserts only its purposes of use (built-in: clinicians TREAT and its
///   specializations, patients PATRQT, apps TREAT/HPAYMT/HOPERAT/HRESCH/PUBHLTH, never
///   ETREAT); any other purpose is refused whole (403);
/// - clinicians: their care team's patients (here: a grant on P1), for TREAT; delete for TREAT
///   only; HRESCH and PATRQT give them nothing; ETREAT without a claim reaches no patient (a
///   search is allowed and shows nothing); break-the-glass (ETREAT with
///   `X-Break-Glass-Reason`) reads any patient, labels included, and writes only where the
///   care team could; a search across patients is allowed and each hit decided on its own;
/// - patients: reads of their own compartment (labels included) with PATRQT; no writes but
///   Consent and Task (not in this matrix);
/// - admin, auditor, researcher: no clinical data at all;
/// - apps: exactly their SMART scopes (`patient/` scopes reach the launch patient's
///   compartment only, so a search is limited to it), within consent;
/// - sensitivity labels need an explicit grant (apps never have one), except for a patient's
///   own record and break-the-glass reads;
/// - consent: no Consent resources are recorded, so the default applies: TREAT and ETREAT are
///   permitted, research (HRESCH) is not (research needs the patient's consent); consent does
///   not bind a patient's own access.
///
/// Columns of each group: P1 P2 O1 O2 PSY (PSY = the PSY-labelled Observation of P1).
/// Groups: read, search by patient (`Patient?_id=` / `Observation?patient=`), search by code
/// (`Patient?family=` shared by P1 and P2 / `Observation?code=` shared by the three
/// Observations), create (an Observation like the column's), update (PUT of the current body),
/// delete (of a fresh copy of the column's Observation), history, transaction (one GET entry).
/// Cells: `A` allow, `d` 403, `h` hidden in a 200 search, `x` hidden or 403, `-` n/a.
///
/// Within a row the interactions run in this order, reads first: in the break-the-glass rows
/// the reads record the claims (one per patient, an hour long) that the later searches of the
/// same row rely on.
pub(crate) const MATRIX: &[(&str, &str, &str)] = &[
    //  principal    purpose        read  s-pat s-code create update delete hist  tx
    //                              PpOoS PpOoS PpOoS  PpOoS  PpOoS  PpOoS  PpOoS PpOoS
    (
        "care",
        "TREAT",
        "AdAdd AxAxh AhAhh --Add AdAdd --Add AdAdd AdAdd",
    ),
    (
        "care",
        "PATRQT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "care",
        "HRESCH",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "care",
        "ETREAT",
        "ddddd xxxxx hhhhh --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "care",
        "ETREAT+BTG",
        "AAAAA AAAAA AAAAA --Add AdAdd --ddd AAAAA AAAAA",
    ),
    (
        "care+psy",
        "TREAT",
        "AdAdA AxAxA AhAhA --AdA AdAdA --AdA AdAdA AdAdA",
    ),
    (
        "care+psy",
        "PATRQT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "care+psy",
        "HRESCH",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "care+psy",
        "ETREAT",
        "ddddd xxxxx hhhhh --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "care+psy",
        "ETREAT+BTG",
        "AAAAA AAAAA AAAAA --AdA AdAdA --ddd AAAAA AAAAA",
    ),
    (
        "other",
        "TREAT",
        "ddddd xxxxx hhhhh --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "other",
        "PATRQT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "other",
        "HRESCH",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "other",
        "ETREAT",
        "ddddd xxxxx hhhhh --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "other",
        "ETREAT+BTG",
        "AAAAA AAAAA AAAAA --ddd ddddd --ddd AAAAA AAAAA",
    ),
    (
        "pat-p1",
        "TREAT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "pat-p1",
        "PATRQT",
        "AdAdA AxAxA AhAhA --ddd ddddd --ddd AdAdA AdAdA",
    ),
    (
        "pat-p1",
        "HRESCH",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "pat-p1",
        "ETREAT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "pat-p1",
        "ETREAT+BTG",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "pat-p2",
        "TREAT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "pat-p2",
        "PATRQT",
        "dAdAd xAxAx hAhAh --ddd ddddd --ddd dAdAd dAdAd",
    ),
    (
        "pat-p2",
        "HRESCH",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "pat-p2",
        "ETREAT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "pat-p2",
        "ETREAT+BTG",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "admin",
        "TREAT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "admin",
        "PATRQT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "admin",
        "HRESCH",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "admin",
        "ETREAT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "admin",
        "ETREAT+BTG",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "auditor",
        "TREAT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "auditor",
        "PATRQT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "auditor",
        "HRESCH",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "auditor",
        "ETREAT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "auditor",
        "ETREAT+BTG",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "research",
        "TREAT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "research",
        "PATRQT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "research",
        "HRESCH",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "research",
        "ETREAT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "research",
        "ETREAT+BTG",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "app-p1",
        "TREAT",
        "ddAdd ddAxh ddAhh --ddd ddddd --ddd ddAdd ddAdd",
    ),
    (
        "app-p1",
        "PATRQT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "app-p1",
        "HRESCH",
        "ddddd ddxxx ddxxx --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "app-p1",
        "ETREAT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "app-p1",
        "ETREAT+BTG",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "system",
        "TREAT",
        "AAAAd AAAAh AAAAh --AAd AAAAd --AAd AAAAd AAAAd",
    ),
    (
        "system",
        "PATRQT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "system",
        "HRESCH",
        "ddddd xxxxx hhhhh --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "system",
        "ETREAT",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
    (
        "system",
        "ETREAT+BTG",
        "ddddd ddddd ddddd --ddd ddddd --ddd ddddd ddddd",
    ),
];
