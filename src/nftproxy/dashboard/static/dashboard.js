// The dashboard's only script, served from its own origin (no build, no third party).
// Pages work without it; with it, live parts follow the cluster and a values form and
// its YAML editor stay in step.
"use strict";

// Parts marked data-live="URL" are replaced by what the server sends there (server-sent
// events, sent only when the part changed).
for (const part of document.querySelectorAll("[data-live]")) {
  const events = new EventSource(part.dataset.live);
  events.addEventListener("update", (event) => {
    part.innerHTML = event.data;
    part.dataset.updated = String(Date.now());
  });
}

// A values editor: editing a field rewrites the YAML, editing the YAML refills the fields;
// the server does both (/values) with the same code that reads the form on submit, and
// says where the values break the chart's schema.
for (const editor of document.querySelectorAll("[data-values-editor]")) {
  const form = editor.closest("form");
  const yaml = editor.querySelector("[data-values-yaml]");
  let timer = null;
  let asked = 0;

  const showErrors = (errors) => {
    for (const span of editor.querySelectorAll("[data-error-for]")) {
      const message = errors[span.dataset.errorFor] || "";
      span.textContent = message;
      span.hidden = !message;
    }
  };

  const sync = async (direction) => {
    const body = new URLSearchParams(new FormData(form));
    body.set("direction", direction);
    const mine = ++asked;
    let answer;
    try {
      const response = await fetch("/values", {
        method: "POST",
        body,
        credentials: "same-origin",
        headers: { "Content-Type": "application/x-www-form-urlencoded" },
      });
      if (!response.headers.get("Content-Type")?.startsWith("application/json")) return;
      answer = await response.json();
    } catch {
      return; // offline for a moment: the form still submits as it is
    }
    if (mine !== asked) return; // a newer edit has been sent since
    if (direction === "form" && answer.values_yaml !== undefined && !answer.errors?.values_yaml) {
      yaml.value = answer.values_yaml;
    }
    if (direction === "yaml" && answer.fields) {
      for (const [name, value] of Object.entries(answer.fields)) {
        const field = form.elements.namedItem(name);
        if (field && field !== document.activeElement) field.value = value;
      }
    }
    showErrors(answer.errors || {});
    editor.dataset.synced = String(mine);
  };

  // The fields' own checks (required, ranges, patterns) hold while the form is the source;
  // with the YAML as the source the server checks the YAML against the schema instead.
  const follow = () => {
    const chosen = form.querySelector('input[name="source"]:checked');
    form.noValidate = Boolean(chosen) && chosen.value === "yaml";
  };
  for (const radio of form.querySelectorAll('input[name="source"]')) {
    radio.addEventListener("change", follow);
  }
  follow();

  const later = (direction, source) => {
    const radio = form.querySelector(`input[name="source"][value="${source}"]`);
    if (radio) radio.checked = true;
    follow();
    clearTimeout(timer);
    timer = setTimeout(() => sync(direction), 250);
  };

  for (const field of editor.querySelectorAll("[data-field]")) {
    field.addEventListener("input", () => later("form", "form"));
    field.addEventListener("change", () => later("form", "form"));
  }
  yaml.addEventListener("input", () => later("yaml", "yaml"));
}
