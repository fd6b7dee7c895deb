//! Grading a provider API from its conformance probes, with hysteresis (issue 14 point
//! 4): `conformant` while probes pass; `degraded` after a failing probe, fewer than K in a
//! row; `failing` (and delisted) after K consecutive failing probes or a sustained SLA
//! breach; back to `conformant` (relisted) after M consecutive passing probes — and, after
//! a sustained breach, only once the SLA window no longer breaches (`breach`). An
//! operator's pin overrides publication either way, and is kept until removed.
//!
//! Pure: the caller stores [`ApiState`] and acts on the [`Transition`] returned (writes
//! the event with its evidence, updates the registry's `delisted` list, notifies the
//! provider).

use serde::{Deserialize, Serialize};

/// A provider API's grade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Grade {
    /// Probes pass (or none has run yet).
    #[default]
    Conformant,
    /// A probe failed; fewer than K in a row.
    Degraded,
    /// K probes failed in a row, or the SLA was breached for the whole window: delisted
    /// unless pinned listed.
    Failing,
}

impl Grade {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Grade::Conformant => "conformant",
            Grade::Degraded => "degraded",
            Grade::Failing => "failing",
        }
    }
}

/// The thresholds (`[oversight]` in the sidecar's configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hysteresis {
    /// K: consecutive failing probes that delist.
    pub fail_after: u32,
    /// M: consecutive passing probes that relist a failing API.
    pub pass_after: u32,
}

impl Default for Hysteresis {
    fn default() -> Self {
        Hysteresis {
            fail_after: 3,
            pass_after: 3,
        }
    }
}

/// An operator's pin: the API stays listed (or delisted) whatever the probes say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// Listed (`true`) or delisted.
    pub listed: bool,
    /// Who pinned it (the operator certificate's subject).
    pub by: String,
    /// Why, in the operator's words.
    pub reason: String,
    /// When, Unix seconds.
    pub at: i64,
}

/// What is kept per provider API between probes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ApiState {
    /// The grade.
    pub grade: Grade,
    /// Failing probes in a row.
    pub failures: u32,
    /// Passing probes in a row.
    pub passes: u32,
    /// The operator's pin, if any.
    pub pin: Option<Pin>,
    /// Whether the SLA window breaches (a sustained breach): failing until it clears.
    #[serde(default)]
    pub breaching: bool,
    /// The latest evaluation of the SLA window (rules, window, numbers), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<serde_json::Value>,
}

impl ApiState {
    /// Whether the API is published: the pin's word when pinned, else not while failing.
    pub fn listed(&self) -> bool {
        match &self.pin {
            Some(p) => p.listed,
            None => self.grade != Grade::Failing,
        }
    }
}

/// A change of grade or of publication, for the event journal and the notifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The grade before.
    pub from: Grade,
    /// The grade after.
    pub to: Grade,
    /// Whether the API was published before.
    pub was_listed: bool,
    /// Whether it is published after.
    pub listed: bool,
}

/// Applies one probe's verdict and returns the transition, if any. While the SLA window
/// breaches, passes are counted but never relist.
pub fn observe(state: &mut ApiState, passed: bool, h: Hysteresis) -> Option<Transition> {
    let (from, was_listed) = (state.grade, state.listed());
    if passed {
        state.passes = state.passes.saturating_add(1);
        state.failures = 0;
        state.grade = match state.grade {
            Grade::Failing if state.passes < h.pass_after || state.breaching => Grade::Failing,
            _ => Grade::Conformant,
        };
    } else {
        state.failures = state.failures.saturating_add(1);
        state.passes = 0;
        // A failure while failing keeps it failing (and restarts the count to relist).
        state.grade = if state.failures >= h.fail_after || state.grade == Grade::Failing {
            Grade::Failing
        } else {
            Grade::Degraded
        };
    }
    changed(state, from, was_listed)
}

/// Applies an evaluation of the SLA window. A sustained breach fails the API at once and
/// restarts the count of passes towards relisting. When the window stops breaching, a
/// failing API is relisted if the last M probes passed (M passes since the breach
/// began), else it waits for them; an API that is not probed (`probed = false`: no test
/// subject, or probing off) is relisted when the window clears, since no probe will ever
/// pass for it.
pub fn breach(
    state: &mut ApiState,
    window: Window,
    probed: bool,
    h: Hysteresis,
) -> Option<Transition> {
    let (from, was_listed) = (state.grade, state.listed());
    match (state.breaching, window) {
        (false, Window::Breaching) => {
            state.breaching = true;
            state.passes = 0;
            state.grade = Grade::Failing;
        }
        // A probed API: the probes are the evidence that the bank works again (a delisted
        // API's window is empty). An API nobody probes needs a window that shows it: a
        // silent one (it is delisted, so it gets no traffic) keeps it delisted, or it would
        // be relisted by its own silence, breach again and flap; an operator's pin gives
        // it traffic to show compliance with.
        (true, Window::Compliant) | (true, Window::Inconclusive)
            if probed || window == Window::Compliant =>
        {
            state.breaching = false;
            let relist = !probed || (state.failures == 0 && state.passes >= h.pass_after);
            if state.grade == Grade::Failing && relist {
                state.grade = Grade::Conformant;
            }
        }
        _ => {}
    }
    changed(state, from, was_listed)
}

/// What an SLA window shows, for [`breach`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// A rule is broken, sustained over the window.
    Breaching,
    /// Enough traffic to conclude, and no rule broken.
    Compliant,
    /// No rule broken, but too little traffic to conclude (a delisted API's window).
    Inconclusive,
}

/// Pins (`Some`) or unpins (`None`) the API; returns the transition of publication, if
/// any.
pub fn pin(state: &mut ApiState, pin: Option<Pin>) -> Option<Transition> {
    let (from, was_listed) = (state.grade, state.listed());
    state.pin = pin;
    changed(state, from, was_listed)
}

fn changed(state: &ApiState, from: Grade, was_listed: bool) -> Option<Transition> {
    let t = Transition {
        from,
        to: state.grade,
        was_listed,
        listed: state.listed(),
    };
    (t.from != t.to || t.was_listed != t.listed).then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Hysteresis = Hysteresis {
        fail_after: 3,
        pass_after: 2,
    };

    fn run(state: &mut ApiState, verdicts: &[bool]) -> Vec<Option<Transition>> {
        verdicts.iter().map(|&p| observe(state, p, H)).collect()
    }

    #[test]
    fn k_failures_in_a_row_delist_and_m_passes_relist() {
        let mut s = ApiState::default();
        let t = run(&mut s, &[false, false]);
        assert_eq!(s.grade, Grade::Degraded);
        assert!(s.listed(), "fewer than K failures never delist");
        assert_eq!(t[0].map(|t| t.to), Some(Grade::Degraded));
        assert_eq!(t[1], None, "still degraded: no event");
        let t = observe(&mut s, false, H).expect("delisted");
        assert_eq!(
            (t.from, t.to, t.was_listed, t.listed),
            (Grade::Degraded, Grade::Failing, true, false)
        );
        // One pass is not enough to relist; M = 2 are.
        assert_eq!(observe(&mut s, true, H), None);
        assert!(!s.listed());
        let t = observe(&mut s, true, H).expect("relisted");
        assert_eq!((t.to, t.listed), (Grade::Conformant, true));
    }

    #[test]
    fn a_single_failure_between_passes_never_delists() {
        let mut s = ApiState::default();
        run(&mut s, &[false, false, true, false, false, true, false]);
        assert_eq!(s.grade, Grade::Degraded);
        assert!(s.listed());
        // A failure while failing resets the passes towards relisting.
        run(&mut s, &[false, false, true, false, true]);
        assert_eq!(s.grade, Grade::Failing);
    }

    #[test]
    fn a_sustained_breach_delists_at_once() {
        let mut s = ApiState::default();
        let t = breach(&mut s, Window::Breaching, true, H).expect("delisted");
        assert_eq!((t.to, t.listed), (Grade::Failing, false));
        assert_eq!(
            breach(&mut s, Window::Breaching, true, H),
            None,
            "still breaching: no event"
        );
    }

    #[test]
    fn a_breach_relists_only_once_cleared_and_after_m_passes() {
        let mut s = ApiState::default();
        run(&mut s, &[true, true, true]);
        breach(&mut s, Window::Breaching, true, H).expect("delisted");
        // Passes while the window breaches never relist.
        assert_eq!(run(&mut s, &[true, true, true]), [None, None, None]);
        assert!(!s.listed());
        // Cleared with M passes behind it: relisted at once.
        let t = breach(&mut s, Window::Inconclusive, true, H).expect("relisted");
        assert_eq!((t.to, t.listed), (Grade::Conformant, true));

        // Cleared without M passes: still failing until they come.
        breach(&mut s, Window::Breaching, true, H).expect("delisted");
        run(&mut s, &[true, false]);
        assert_eq!(breach(&mut s, Window::Inconclusive, true, H), None);
        assert!(!s.listed() && !s.breaching);
        assert_eq!(observe(&mut s, true, H), None);
        let t = observe(&mut s, true, H).expect("relisted after M passes");
        assert!(t.listed);

        // Not probed: its own silence (delisted, no traffic) never relists it — it would
        // flap; a window that shows compliance (traffic under an operator's pin) does.
        let mut s = ApiState::default();
        breach(&mut s, Window::Breaching, false, H).expect("delisted");
        assert_eq!(breach(&mut s, Window::Inconclusive, false, H), None);
        assert!(!s.listed() && s.breaching);
        assert!(
            breach(&mut s, Window::Compliant, false, H)
                .expect("relisted")
                .listed
        );
    }

    #[test]
    fn a_pinned_api_keeps_its_publication_through_a_breach() {
        let mut s = ApiState::default();
        let listed = Pin {
            listed: true,
            by: "operator".into(),
            reason: "agreed".into(),
            at: 0,
        };
        pin(&mut s, Some(listed));
        let t = breach(&mut s, Window::Breaching, true, H).expect("the grade changes");
        assert_eq!((t.to, t.was_listed, t.listed), (Grade::Failing, true, true));
    }

    #[test]
    fn a_pin_overrides_the_grade_until_removed() {
        let mut s = ApiState::default();
        let listed = Pin {
            listed: true,
            by: "operator".into(),
            reason: "maintenance window agreed".into(),
            at: 0,
        };
        assert_eq!(pin(&mut s, Some(listed)), None, "already listed: no change");
        run(&mut s, &[false, false, false]);
        assert_eq!(s.grade, Grade::Failing);
        assert!(s.listed(), "pinned listed stays listed");
        let t = pin(&mut s, None).expect("unpinned: the grade applies");
        assert!(!t.listed);
        let delisted = Pin {
            listed: false,
            by: "operator".into(),
            reason: "incident".into(),
            at: 1,
        };
        run(&mut s, &[true, true]);
        assert!(s.listed());
        let t = pin(&mut s, Some(delisted)).expect("pinned delisted");
        assert!(!t.listed && s.grade == Grade::Conformant);
        run(&mut s, &[true, true, true]);
        assert!(!s.listed(), "probes never relist a pinned API");
    }
}
