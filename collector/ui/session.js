// Who is logged in and what their role lets them do. The server decides
// (403 for anything not allowed); this only keeps buttons that would be
// refused out of sight, following the same table as collector/src/auth.rs
// (and api/inspection.rs for accepting, dismissing and verifying hazards).

let me = null;

export function setMe(m) {
  me = m;
}

export function currentUser() {
  return me;
}

/** Acknowledge, comment, assign, silence: responders and admins (auth.rs Need::Respond). */
export function canRespond() {
  return me != null && (me.role === "responder" || me.role === "admin");
}

/** Record patrols, register and work on hazards: everyone but viewers (auth.rs Need::Record). */
export function canRecord() {
  return me != null && me.role !== "viewer";
}

/** Accept, dismiss and verify hazards: inspectors and admins. */
export function canInspect() {
  return me != null && (me.role === "inspector" || me.role === "admin");
}
