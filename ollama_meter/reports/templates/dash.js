// The dashboard's only script: hover values, filters that apply themselves, drill-down links.
// Everything it shows is already in the page; with scripts off the page reads the same.
(() => {
  "use strict";
  const tip = document.createElement("div");
  tip.className = "tip";
  tip.hidden = true;
  tip.setAttribute("role", "status");
  document.body.append(tip);
  const place = (event) => {
    const x = Math.min(event.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
    const y = event.clientY - tip.offsetHeight - 12;
    tip.style.left = `${Math.max(x, 8)}px`;
    tip.style.top = `${y < 8 ? event.clientY + 18 : y}px`;
  };
  document.addEventListener("pointerover", (event) => {
    const mark = event.target instanceof Element ? event.target.closest("[data-tip]") : null;
    if (!mark) {
      tip.hidden = true;
      return;
    }
    tip.textContent = mark.getAttribute("data-tip");
    tip.hidden = false;
    place(event);
  });
  document.addEventListener("pointermove", (event) => {
    if (!tip.hidden) place(event);
  });
  document.addEventListener("pointerleave", () => { tip.hidden = true; });

  const form = document.getElementById("filters");
  if (form) {
    const period = form.elements.namedItem("period");
    const custom = document.getElementById("f-custom");
    const showCustom = () => { custom.hidden = period.value !== "custom"; };
    showCustom();
    form.addEventListener("change", (event) => {
      const field = event.target;
      if (field.name === "since" || field.name === "until") period.value = "custom";
      showCustom();
      if (period.value === "custom" && !form.elements.namedItem("since").value) return;
      form.requestSubmit();
    });
    // Shareable links: leave out what is empty, and the dates unless the range is custom.
    form.addEventListener("submit", () => {
      for (const field of form.elements) {
        const dates = field.name === "since" || field.name === "until";
        if (field.name && (!field.value || (dates && period.value !== "custom"))) field.disabled = true;
      }
    });
    window.addEventListener("pageshow", () => {
      for (const field of form.elements) field.disabled = false;
    });
  }

  // Drill-down: a department's link (bar, legend) opens its panel.
  const hashed = () => {
    const raw = location.hash.slice(1);
    try {
      return decodeURIComponent(raw);
    } catch {
      return raw; // a link cut short ("#%"): no escape to read, so read it as written
    }
  };
  const openTarget = () => {
    const target = location.hash ? document.getElementById(hashed()) : null;
    if (target instanceof HTMLDetailsElement) {
      target.open = true;
      target.scrollIntoView({ block: "nearest" });
    }
  };
  window.addEventListener("hashchange", openTarget);
  openTarget();
})();
