// Small progressive enhancements for the server-rendered forms; every form also works without it.
(function () {
  "use strict";

  // The original reformats the price to two decimals when the field loses focus.
  function formatPrice(input) {
    var value = parseFloat(input.value);
    if (!isNaN(value) && isFinite(value)) {
      input.value = value.toFixed(2);
    }
  }

  // A form in flight cannot be sent twice: its buttons are disabled until the next page loads.
  function lock(form) {
    if (form.dataset.submitting === "true") {
      return false;
    }
    form.dataset.submitting = "true";
    form.setAttribute("aria-busy", "true");
    Array.prototype.forEach.call(form.querySelectorAll("button"), function (button) {
      button.disabled = true;
    });
    return true;
  }

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("input[data-price]"), function (input) {
      input.addEventListener("blur", function () {
        formatPrice(input);
      });
    });

    // Listening on the document runs after the form's own listeners, so a form whose submit was
    // taken over (Stripe Checkout opening) is not locked.
    document.addEventListener("submit", function (event) {
      var form = event.target;
      if (event.defaultPrevented || !form.hasAttribute("data-disable-on-submit")) {
        return;
      }
      if (!lock(form)) {
        event.preventDefault();
      }
    });

    // Back/forward cache restores a locked form; unlock it so it can be used again.
    window.addEventListener("pageshow", function (event) {
      if (!event.persisted) {
        return;
      }
      Array.prototype.forEach.call(document.querySelectorAll("form[data-submitting]"), function (form) {
        delete form.dataset.submitting;
        form.removeAttribute("aria-busy");
        Array.prototype.forEach.call(form.querySelectorAll("button"), function (button) {
          button.disabled = false;
        });
      });
    });

    // A form sent back with errors: focus goes to the first field in error (its label and, through
    // aria-describedby, its messages are read out), or else to the error summary, so that keyboard
    // and screen-reader users land on what needs fixing (the summary is also role="alert").
    var invalid = document.querySelector("form [aria-invalid='true']");
    var summary = document.getElementById("errors");
    if (invalid) {
      invalid.focus();
    } else if (summary) {
      summary.setAttribute("tabindex", "-1");
      summary.focus();
    }

    // The sign-out page signs out at once, as the original did on mount.
    var auto = document.querySelector("form[data-autosubmit]");
    if (auto && lock(auto)) {
      auto.submit();
    }
  });

  window.TicketingForms = { lock: lock };
})();
