// A stand-in for Stripe.js (https://js.stripe.com/v3/) in the browser tests, served by the Stripe
// double (`cargo run -p e2e --bin stripe-double`) when no real Stripe key is available. It offers
// what the order page uses: Stripe(key), elements().create("card").mount(selector),
// createPaymentMethod({type, card}) and handleNextAction({clientSecret}). The card field is a plain
// input that knows Stripe's test cards; 3-D Secure is a dialog whose buttons tell the double to
// pass or fail the PaymentIntent's authentication, as Stripe's test page does.
(function () {
  "use strict";

  var origin = new URL(document.currentScript.src).origin;

  // Stripe's test cards and the PaymentMethods Stripe's test mode gives for them.
  var TEST_CARDS = {
    "4242424242424242": "pm_card_visa",
    "4000002760003184": "pm_card_threeDSecure2Required",
    "4000000000000002": "pm_card_chargeDeclined",
  };

  function cardElement() {
    var input = null;
    return {
      mount: function (selector) {
        var host = document.querySelector(selector);
        input = document.createElement("input");
        input.id = "stub-card-number";
        input.className = "input";
        input.inputMode = "numeric";
        input.autocomplete = "cc-number";
        input.setAttribute("aria-label", "Card number");
        input.placeholder = "1234 1234 1234 1234";
        host.appendChild(input);
      },
      number: function () {
        return input ? input.value.replace(/\s+/g, "") : "";
      },
    };
  }

  function authenticationDialog(intentId) {
    return new Promise(function (resolve) {
      var dialog = document.createElement("div");
      dialog.id = "stub-3ds";
      dialog.setAttribute("role", "dialog");
      dialog.setAttribute("aria-modal", "true");
      dialog.setAttribute("aria-labelledby", "stub-3ds-heading");
      dialog.className = "card";
      var heading = document.createElement("h2");
      heading.id = "stub-3ds-heading";
      heading.textContent = "3-D Secure (test)";
      dialog.appendChild(heading);
      [
        ["stub-3ds-complete", "Complete authentication", "pass"],
        ["stub-3ds-fail", "Fail authentication", "fail"],
      ].forEach(function (choice) {
        var button = document.createElement("button");
        button.type = "button";
        button.className = "button";
        button.id = choice[0];
        button.textContent = choice[1];
        button.addEventListener("click", function () {
          dialog.remove();
          resolve(choice[2]);
        });
        dialog.appendChild(button);
      });
      document.body.appendChild(dialog);
      dialog.querySelector("button").focus();
    }).then(function (result) {
      return window
        .fetch(origin + "/test/3ds/" + encodeURIComponent(intentId) + "/" + result, { method: "POST" })
        .then(function () {
          return result;
        });
    });
  }

  window.Stripe = function (key) {
    if (!/^pk_/.test(key)) {
      throw new Error("Stripe(): a publishable key is needed");
    }
    return {
      elements: function () {
        return {
          create: function (type) {
            if (type !== "card") {
              throw new Error("the stub only has the card element");
            }
            return cardElement();
          },
        };
      },
      createPaymentMethod: function (options) {
        var number = options.card.number();
        if (number.length < 16) {
          return Promise.resolve({
            error: { type: "validation_error", message: "Your card number is incomplete." },
          });
        }
        var id = TEST_CARDS[number];
        if (!id) {
          return Promise.resolve({
            error: { type: "validation_error", message: "Your card number is invalid." },
          });
        }
        return Promise.resolve({ paymentMethod: { id: id, type: "card" } });
      },
      handleNextAction: function (options) {
        var intentId = String(options.clientSecret).split("_secret_")[0];
        return authenticationDialog(intentId).then(function (result) {
          if (result === "pass") {
            return { paymentIntent: { id: intentId, status: "succeeded" } };
          }
          return {
            error: {
              type: "card_error",
              message:
                "We are unable to authenticate your payment method. Please choose a different payment method and try again.",
            },
          };
        });
      },
    };
  };
})();
