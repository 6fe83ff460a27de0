// The order page: counts the time left to pay down every second, and pays through Stripe.js (the
// Card Element and a PaymentIntent) when the server configured a publishable key (otherwise the
// form posts Stripe's test token).
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

  // Shows messages in the page's alert (role="alert": read out when it appears), replacing any.
  function showErrors(form, messages) {
    var old = document.getElementById("errors");
    if (old) {
      old.remove();
    }
    var alert = document.createElement("div");
    alert.className = "alert alert-danger";
    alert.id = "errors";
    alert.setAttribute("role", "alert");
    var heading = document.createElement("h2");
    heading.className = "alert-heading";
    heading.textContent = "Oh snap!";
    var list = document.createElement("ul");
    list.className = "alert-list";
    messages.forEach(function (message) {
      var item = document.createElement("li");
      item.textContent = message;
      list.appendChild(item);
    });
    alert.appendChild(heading);
    alert.appendChild(list);
    form.parentNode.insertBefore(alert, form);
  }

  function unlock(form) {
    delete form.dataset.submitting;
    form.removeAttribute("aria-busy");
    Array.prototype.forEach.call(form.querySelectorAll("button"), function (button) {
      button.disabled = false;
    });
  }

  // Posts to one of this site's checkout routes (CSRF-checked like the form itself); resolves to
  // {status, body}, the body being the route's JSON or null when it answered something else.
  function post(form, url, fields) {
    var body = new URLSearchParams();
    body.append("csrf_token", form.querySelector("input[name=csrf_token]").value);
    Object.keys(fields).forEach(function (name) {
      body.append(name, fields[name]);
    });
    return window
      .fetch(url, { method: "POST", body: body, credentials: "same-origin" })
      .then(function (response) {
        return response
          .json()
          .catch(function () {
            return null;
          })
          .then(function (json) {
            return { status: response.status, body: json };
          });
      });
  }

  // Pays through Stripe.js when the server configured a publishable key: the Card Element makes a
  // PaymentMethod, the server creates and confirms the PaymentIntent, and a 3-D Secure it asks
  // for is done by Stripe.js (handleNextAction) before the server is asked to look again.
  function setUpCheckout(form) {
    var key = form.dataset.stripeKey;
    if (!key) {
      return;
    }
    var button = form.querySelector("button");
    if (typeof window.Stripe !== "function") {
      if (button) {
        button.disabled = true;
      }
      showErrors(form, ["The payment form could not be loaded. Please reload the page."]);
      return;
    }
    var stripe = window.Stripe(key);
    var card = stripe.elements().create("card", { hidePostalCode: true });
    card.mount("#card-element");
    var intentUrl = form.dataset.intentUrl;
    var orderUrl = form.getAttribute("action");

    // `acted`: the buyer has just been through the card's authentication once for this click.
    function settle(answer, acted) {
      var body = answer.body || {};
      if (answer.status === 200 && body.status === "paid") {
        window.location.assign("/orders");
        return null;
      }
      if (answer.status === 200 && body.status === "requires_action" && body.clientSecret) {
        if (acted) {
          // Closed or abandoned: paying again reopens the same authentication.
          showErrors(form, ["Your card was not authenticated. Pay again to retry."]);
          unlock(form);
          return null;
        }
        return stripe.handleNextAction({ clientSecret: body.clientSecret }).then(function () {
          // Whatever Stripe.js says, the server asks Stripe where the payment stands.
          return post(form, intentUrl + "/check", {}).then(function (checked) {
            return settle(checked, true);
          });
        });
      }
      if (answer.status === 202) {
        // Being confirmed: the order page says so, with a link to check again.
        window.location.assign(orderUrl);
        return null;
      }
      var messages = (body.errors || []).map(function (e) {
        return e.message;
      });
      showErrors(form, messages.length ? messages : ["The payment did not go through. Please try again."]);
      unlock(form);
      return null;
    }

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      if (window.TicketingForms && !window.TicketingForms.lock(form)) {
        return;
      }
      stripe
        .createPaymentMethod({ type: "card", card: card })
        .then(function (result) {
          if (result.error) {
            showErrors(form, [result.error.message]);
            unlock(form);
            return null;
          }
          return post(form, intentUrl, { payment_method: result.paymentMethod.id }).then(function (answer) {
            return settle(answer, false);
          });
        })
        .catch(function () {
          showErrors(form, ["The payment could not be sent. Check your connection and try again."]);
          unlock(form);
        });
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
