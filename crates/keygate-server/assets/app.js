// keygate dashboard: copy buttons, confirmations, the project dropdown. No network use.
document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const text = document.getElementById(button.dataset.copy)?.textContent ?? "";
  navigator.clipboard?.writeText(text).then(() => { button.textContent = "Copied"; }, () => {});
});
document.addEventListener("submit", (event) => {
  const message = event.target.dataset.confirm;
  if (message && !window.confirm(message)) event.preventDefault();
});
document.addEventListener("change", (event) => {
  if (event.target.name !== "level") return;
  const choice = document.getElementById("project-choice");
  if (choice) choice.hidden = event.target.value !== "project";
});
