// The order page: counts the time left to pay down every second, and pays through Stripe Checkout
// when the server configured a publishable key (otherwise the form posts Stripe's test token).
(function () {
  "use strict";

  function startCountdown(status, form) {
    var secondsLeft = parseInt(status.dataset.secondsLeft, 10);
    if (isNaN(secondsLeft)) {
      return;
    }
    // Counted from this page's clock, not the wall clock, so a skewed device clock cannot matter.
    var start = Date.now();
    function tick() {
      var left = secondsLeft - Math.round((Date.now() - start) / 1000);
      if (left < 0) {
        status.textContent = "Order expired.";
        status.classList.remove("timer");
        status.classList.add("expired");
        status.setAttribute("role", "status");
        if (form) {
          form.remove();
        }
        window.clearInterval(timer);
        return;
      }
      status.textContent = "Time left to pay: " + left + " seconds.";
    }
    var timer = window.setInterval(tick, 1000);
  }

  function setUpCheckout(form) {
    var key = form.dataset.stripeKey;
    if (!key) {
      return;
    }
    var token = form.querySelector("input[name=token]");
    if (!window.StripeCheckout) {
      var button = form.querySelector("button");
      if (button) {
        button.disabled = true;
      }
      var note = document.createElement("p");
      note.className = "hint";
      note.textContent = "The payment form could not be loaded. Please reload the page.";
      form.appendChild(note);
      return;
    }
    var handler = window.StripeCheckout.configure({
      key: key,
      locale: "auto",
      token: function (result) {
        token.value = result.id;
        if (window.TicketingForms) {
          window.TicketingForms.lock(form);
        }
        form.submit();
      },
    });
    form.addEventListener("submit", function (event) {
      if (token.value) {
        return;
      }
      event.preventDefault();
      handler.open({
        name: "Ticketing System",
        description: form.dataset.description,
        amount: parseInt(form.dataset.amount, 10),
        currency: form.dataset.currency,
        email: form.dataset.email,
      });
    });
    window.addEventListener("popstate", function () {
      handler.close();
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("pay-form");
    var status = document.getElementById("order-status");
    if (status && status.dataset.secondsLeft !== undefined) {
      startCountdown(status, form);
    }
    if (form) {
      setUpCheckout(form);
    }
  });
})();
