"""Patient accounts: local log-in, external OpenID Connect log-in, sessions and CSRF.

What other parts of the broker use:

- ``patient_from_request(session, request, settings)``: the logged-in patient or None;
- ``login_redirect(request)``: a 303 to the log-in page that comes back here;
- ``csrf_token(request, settings)`` / ``check_csrf(request, settings, submitted)``: the
  hidden ``csrf_token`` input of every form, and its check (403 ``CsrfRejected``);
- ``render_page(request, template_name, **context)``: a page in the visitor's language with
  the patient pages' security headers; ``PAGE_EXCEPTION_HANDLERS`` renders errors as pages;
- ``seed_demo_patients(session, settings)``: the demo accounts (development mode only).
"""

from broker.consent.patients.csrf import check_csrf, csrf_token
from broker.consent.patients.demo import DemoRefused, seed_demo_patients
from broker.consent.patients.errors import CsrfRejected
from broker.consent.patients.models import Patient
from broker.consent.patients.pages import PAGE_EXCEPTION_HANDLERS, patient_pages, patient_state
from broker.consent.patients.rendering import render_page, safe_next
from broker.consent.patients.sessions import login_redirect, patient_from_request

__all__ = [
    "PAGE_EXCEPTION_HANDLERS",
    "CsrfRejected",
    "DemoRefused",
    "Patient",
    "check_csrf",
    "csrf_token",
    "login_redirect",
    "patient_from_request",
    "patient_pages",
    "patient_state",
    "render_page",
    "safe_next",
    "seed_demo_patients",
]
