// Artifacts: upload a signed .otter (checked by the server exactly as a device checks it) and the list.

import { api, can, fill, h, section, showError, table, time } from "./lib.js";

export async function render(main) {
  const list = await api("GET", "/artifacts");
  const result = h("div", { id: "upload-result" });
  let upload = null;
  if (can("operate")) {
    const file = h("input", { type: "file", id: "upload-file", accept: ".otter", required: true });
    const button = h("button", { type: "submit", class: "act primary", id: "upload" }, "Upload");
    upload = h(
      "form",
      { id: "upload-form", class: "filters" },
      h("label", { class: "field" }, h("span", {}, "Signed artifact (.otter)"), file),
      button,
      result,
    );
    upload.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const f = file.files[0];
      if (!f) return;
      button.disabled = true;
      fill(result, h("p", { class: "muted" }, `Uploading ${f.name} (${f.size} bytes) and checking its signature…`));
      try {
        const a = await api("POST", `/artifacts?filename=${encodeURIComponent(f.name)}`, f);
        await render(main);
        fill(
          document.getElementById("upload-result"),
          h(
            "p",
            { class: "notice", id: "uploaded" },
            `Accepted: version ${a.version} for ${a.compatible.join(", ")}, security version ${a.security_version}, signed by ${a.signer}.`,
          ),
        );
      } catch (e) {
        showError(result, e);
      } finally {
        button.disabled = false;
      }
    });
  }
  main.replaceChildren(
    h("h1", {}, "Artifacts"),
    upload ? section("Upload", upload) : null,
    section(
      `Artifacts (${list.length})`,
      table(
        [
          { title: "#", cell: (a) => String(a.id) },
          { title: "Version", cell: (a) => a.version },
          { title: "Compatible", cell: (a) => a.compatible.join(", ") },
          { title: "Security version", cell: (a) => String(a.security_version) },
          { title: "Signer key id", cell: (a) => h("code", {}, a.signer) },
          { title: "File", cell: (a) => `${a.filename} (${(a.size / 1048576).toFixed(1)} MiB)` },
          { title: "SHA-256", cell: (a) => h("code", { title: a.sha256 }, `${a.sha256.slice(0, 12)}…`) },
          { title: "Uploaded", cell: (a) => `${time(a.created_ms)} by ${a.uploaded_by}` },
        ],
        list,
        { id: "artifacts", class: "list" },
      ),
    ),
  );
}
