// The rules editor's bundle (built by esbuild into ../static/vendor/editor.js, global `AstralisEditor`):
// CodeMirror 6 with YAML highlighting, completion and hover documentation read from the config files' JSON Schemas
// (schemas/*.schema.json, served by the dashboard), and the validator's findings as diagnostics at their line.
// The schema walk is small and ours: what sits at the cursor is found from the YAML's indentation (block style and
// one level of {flow: mapping}), which is how these files are written.
import { EditorView, basicSetup } from "codemirror";
import { yaml } from "@codemirror/lang-yaml";
import { autocompletion } from "@codemirror/autocomplete";
import { lintGutter, setDiagnostics } from "@codemirror/lint";
import { EditorState, Compartment } from "@codemirror/state";
import { hoverTooltip, keymap } from "@codemirror/view";

const ITEM = Symbol("item");

// ---- the JSON Schema --------------------------------------------------------------------------------------------

function deref(root, node) {
  let n = node;
  for (let i = 0; n && n.$ref && i < 20; i++) {
    const parts = n.$ref.replace(/^#\//, "").split("/");
    n = parts.reduce((acc, p) => (acc ? acc[p] : undefined), root);
  }
  return n || {};
}

/** Every alternative a node stands for ($ref, anyOf, oneOf, allOf followed), flattened. */
function options(root, node, depth = 0) {
  const n = deref(root, node);
  const alts = [...(n.anyOf || []), ...(n.oneOf || []), ...(n.allOf || [])];
  if (!alts.length || depth > 8) return [n];
  return [n, ...alts.flatMap((a) => options(root, a, depth + 1))];
}

function properties(root, node) {
  const out = {};
  for (const o of options(root, node)) Object.assign(out, o.properties || {});
  return out;
}

function step(root, node, key) {
  const alts = options(root, node);
  if (key === ITEM) {
    const items = alts.map((o) => o.items).filter(Boolean);
    return items.length ? { anyOf: items } : null;
  }
  const found = alts.map((o) => o.properties?.[key] ?? (typeof o.additionalProperties === "object" ? o.additionalProperties : null))
    .filter(Boolean);
  return found.length ? { anyOf: found } : null;
}

function at(root, path) {
  let node = root;
  for (const key of path) {
    node = step(root, node, key);
    if (!node) return null;
  }
  return node;
}

function describe(root, node) {
  const alts = options(root, node);
  const text = alts.map((o) => o.description).find(Boolean) || alts.map((o) => o.title).find(Boolean) || "";
  const types = [...new Set(alts.map((o) => o.type).filter(Boolean).flat())].join(" | ");
  const values = [...new Set(alts.flatMap((o) => o.enum || (o.const !== undefined ? [o.const] : [])))];
  return { text, types, values };
}

// ---- where the cursor is in the YAML ---------------------------------------------------------------------------

const LINE = /^(\s*)(- +)?(?:([\w.$-]+)\s*:(?=\s|$))?/;

/** The path of keys (ITEM for a list item) that holds a key written at `indent` on line `lineNo` (1-based). */
function parentPath(doc, lineNo, indent) {
  const path = [];
  let t = indent;
  for (let n = lineNo - 1; n >= 1 && t > 0; n--) {
    const text = doc.line(n).text;
    if (!text.trim() || text.trim().startsWith("#")) continue;
    const m = LINE.exec(text);
    const d = m[1].length;
    const k = d + (m[2] ? m[2].length : 0);
    if (m[3] && k < t) { path.unshift(m[3]); t = k; }
    if (m[2] && d < t) { path.unshift(ITEM); t = d; }
    if (!m[2] && !m[3] && d < t) t = d; // a scalar line: keep going up
  }
  return path;
}

/** What is being typed at `pos`: {kind: "key" | "value", path, key, from}. */
function context(state, pos) {
  const line = state.doc.lineAt(pos);
  const before = line.text.slice(0, pos - line.from);
  const m = /^(\s*)(- +)?(.*)$/.exec(before);
  const indent = m[1].length + (m[2] ? m[2].length : 0);
  let path = parentPath(state.doc, line.number, indent);
  let rest = m[3];
  if (m[2]) path = [...parentPath(state.doc, line.number, m[1].length), ITEM];
  // one level of flow mapping: `then: {intent: BILL`
  const flow = /^([\w.$-]+)\s*:\s*\{([^}]*)$/.exec(rest);
  if (flow) {
    path = [...path, flow[1]];
    rest = flow[2].split(",").pop().replace(/^\s+/, "");
  }
  const value = /^([\w.$-]+)\s*:\s*([\w.$-]*)$/.exec(rest);
  if (value) return { kind: "value", path, key: value[1], from: pos - value[2].length };
  const key = /^([\w.$-]*)$/.exec(rest);
  if (key) return { kind: "key", path, key: key[1], from: pos - key[1].length };
  return null;
}

function schemaCompletion(getSchema) {
  return (ctx) => {
    const root = getSchema();
    if (!root) return null;
    const c = context(ctx.state, ctx.pos);
    if (!c || (c.kind === "key" && !c.key && !ctx.explicit)) return null;
    const node = at(root, c.path);
    if (!node) return null;
    if (c.kind === "key") {
      const props = properties(root, node);
      return {
        from: c.from,
        options: Object.entries(props).map(([name, p]) => {
          const d = describe(root, p);
          return { label: name, type: "property", detail: d.types, info: d.text || undefined, apply: `${name}: ` };
        }),
        validFor: /^[\w.$-]*$/,
      };
    }
    const prop = step(root, node, c.key);
    if (!prop) return null;
    const d = describe(root, prop);
    const values = d.values.length ? d.values : d.types.includes("boolean") ? [true, false] : [];
    if (!values.length) return null;
    return { from: c.from, options: values.map((v) => ({ label: String(v), type: "enum", detail: c.key })),
             validFor: /^[\w.$-]*$/ };
  };
}

function schemaHover(getSchema) {
  return hoverTooltip((view, pos) => {
    const root = getSchema();
    if (!root) return null;
    const line = view.state.doc.lineAt(pos);
    const re = /([\w.$-]+)\s*:(?=\s|$)/g;
    let m;
    while ((m = re.exec(line.text))) {
      const from = line.from + m.index;
      const to = from + m[1].length;
      if (pos < from || pos > to) continue;
      const c = context(view.state, to);
      if (!c) return null;
      const node = at(root, c.path);
      const prop = node && step(root, node, m[1]);
      if (!prop) return null;
      const d = describe(root, prop);
      if (!d.text && !d.types && !d.values.length) return null;
      return {
        pos: from, end: to, above: true,
        create() {
          const dom = document.createElement("div");
          dom.className = "cm-schema-doc";
          const head = document.createElement("strong");
          head.textContent = `${m[1]}${d.types ? ` (${d.types})` : ""}`;
          dom.append(head);
          if (d.text) { const p = document.createElement("div"); p.textContent = d.text; dom.append(p); }
          if (d.values.length) {
            const p = document.createElement("div");
            p.className = "cm-schema-values";
            p.textContent = `One of: ${d.values.join(", ")}`;
            dom.append(p);
          }
          return { dom };
        },
      };
    }
    return null;
  });
}

// ---- the editor -------------------------------------------------------------------------------------------------

/** A YAML editor in `parent`: `onChange(text)` on every edit; `setSchema(schema)` switches completion and hover. */
export function create({ parent, doc = "", onChange = () => {}, onSave = null }) {
  let schema = null;
  const readOnly = new Compartment();
  const keys = onSave ? [keymap.of([{ key: "Mod-s", preventDefault: true, run: () => { onSave(); return true; } }])] : [];
  const view = new EditorView({
    parent,
    state: EditorState.create({
      doc,
      extensions: [
        basicSetup, yaml(), lintGutter(), autocompletion({ override: [schemaCompletion(() => schema)], activateOnTyping: true }),
        schemaHover(() => schema), readOnly.of(EditorState.readOnly.of(false)), ...keys,
        EditorView.updateListener.of((u) => { if (u.docChanged) onChange(u.state.doc.toString()); }),
        EditorView.theme({ "&": { height: "100%" }, ".cm-scroller": { overflow: "auto" } }),
      ],
    }),
  });
  return {
    view,
    get text() { return view.state.doc.toString(); },
    /** Replace the whole text (a file opened); not reported to onChange. */
    setText(text) {
      const current = view.state.doc.toString();
      if (current === text) return;
      view.dispatch({ changes: { from: 0, to: current.length, insert: text } });
    },
    setSchema(s) { schema = s; },
    /** Findings `{line, severity, text}` (1-based lines; 0 = the whole file) as diagnostics at their line. */
    setFindings(findings) {
      const doc = view.state.doc;
      const diagnostics = findings.map((f) => {
        const line = doc.line(Math.min(Math.max(1, f.line || 1), doc.lines));
        const start = line.from + (/^\s*/.exec(line.text)[0].length);
        return { from: start, to: Math.max(start, line.to), severity: f.severity === "error" ? "error" : "warning",
                 message: f.text };
      });
      view.dispatch(setDiagnostics(view.state, diagnostics));
    },
    /** Select line `n` and scroll it into the middle of the view. */
    goTo(n) {
      const line = view.state.doc.line(Math.min(Math.max(1, n || 1), view.state.doc.lines));
      view.dispatch({ selection: { anchor: line.from, head: line.to },
                      effects: EditorView.scrollIntoView(line.from, { y: "center" }) });
      view.focus();
    },
  };
}
