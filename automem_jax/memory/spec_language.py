"""The spec language reference for writers (people and LLM proposers): generated from the tables the validator uses,
so it cannot drift from what loads. The structure loop puts it in every proposer workspace (spec_language.md) and
docs/SPECS.md holds it verbatim (a test checks both).
"""
from __future__ import annotations

from automem_jax.memory import expr, runtime_spec as rs

EXAMPLE = r"""runtime:
  fields:
  - {name: health, kind: regex, source: status, pattern: 'health: (\d+)/9', type: int, default: 9}
  - {name: prev_health, kind: previous, of: health, default: 9}
  - {name: inv, kind: inventory}
  - {name: near, kind: entities}
  - {name: gained, kind: diff, of: inv}
  - {name: idle, kind: since, when: 'len(gained.gained) > 0'}
  - {name: noops, kind: streak, when: "last_action == 'Noop'"}
  - {name: rep, kind: repetition, size: 8}
  notices:
  - name: survival
    phases: [LOG, PLAN]
    header: === SURVIVAL ===
    rules:
    - {when: health <= 2, text: 'CRITICAL: health {health}/9.'}
    - {when: prev_health > health, text: 'You lost {prev_health - health} health.'}
  - name: next
    phases: [PLAN]
    mode: first
    rules:
    - {when: inv.wood >= 2 and not near.table, text: 'NEXT: Place Table.'}
    - {when: near.tree, text: 'NEXT: wood; tree {near.tree.distance} steps {near.tree.direction}.'}
    - {text: 'NEXT: explore.'}
  - name: stuck
    phases: [PLAN]
    placement: both
    rules:
    - {when: rep.failures >= 3, text: "'{rep.action}' failed {rep.failures} times: do something else."}
  kept_files:
  - {file: status.txt, before: PLAN, content: "step {step}: health {health}/9, {idle} steps without a new item\n"}
  prune:
  - {file: actions_log.txt, after: LOG, over_lines: 200, keep_last: 100, marker: '[... {pruned} older lines ...]'}
  auto_ops:
  - {before: PLAN, op: TAIL, args: actions_log.txt|5}
  - {after: LOG, op: APPEND, args: "actions_log.txt|Step {step - 1} action '{last_action}': [auto-logged]", when: not wrote}
  gate:
    max_rejections: 2
    message: 'ACTION REJECTED: {reason}'
    rules:
    - {when: action == 'Place Table' and inv.wood < 2, reason: 'Place Table needs 2 wood; you have {inv.wood}.'}
    - {when: action == 'Noop' and noops >= 5, reason: 'No more Noops.'}
  repair: [trailing_period, diagonal_to_vertical, case, {map: {'go west': Move West}},
           {pattern: '(?i)move (north|south|east|west)', replace: 'Move \1'}]
  prompt_overrides:
  - {phase: PLAN, when: "'In what direction?' in message", ops: [], template: "{observation}\nAnswer with a direction only: <|{action_tag}|>direction<|END|>"}
"""

_GUIDE = """\
# Spec language: the `runtime:` section

A spec (YAML) has phases (LOG, PLAN), memory files and ops; the optional `runtime:` section adds what AutoMem's
evolved scaffolds computed in code, as data: values derived from each observation, notices injected into prompts,
files the runtime rewrites or prunes, ops the runtime runs, an action gate, action repair and prompt overrides.
Nothing in it is executed as code: expressions use the small grammar below, regexes run on RE2.

## One agent step
1. `fields` are computed, in dependency order, from the new observation (and the episode so far).
2. For each phase (LOG, PLAN): `kept_files` with `before: PHASE` are written (also when the phase is skipped at
   step 0), the first matching `prompt_overrides` entry replaces the phase's template/ops, `auto_ops` with
   `before: PHASE` run and their results plus the matching `notices` fill `{notices}` (placement `inline`), or go
   above (`top`) / below (`bottom`) / both around the phase's first message.
3. When a phase ends: `auto_ops` with `after: PHASE` run (they may write; `wrote` says whether the phase changed
   memory), then `prune` policies with `after: PHASE`.
4. The committed action is repaired (`repair`, in order), then checked by the `gate`: the first rule that holds
   rejects it; the model sees the message as the next user turn of the action phase and commits again (at most
   `max_rejections` per step, each costing a turn; with the budget spent, or on the phase's last turn, the action
   goes through). With a separate action model (two roles) the gate checks the action model's commit.

## Expressions
`when` conditions and `expr` fields use: numbers, 'text' or "text", true, false, null, field names, `a.b` (map key;
a missing key is null), `a[i]` (list index or map key), `[x, y]`, `+ - * / %`, `== != < <= > >=`, `in` / `not in`
(substring, list member, map key), `and`, `or`, `not`, and the functions below. No other names, no attributes, no
Python. Evaluation never fails: arithmetic on null or mixed types is null, ordering between unlike types is false,
`x / 0` is null, a null condition is false. Inventory maps read 0 for items not held (`inv.stone < 1` works).

## Templates
Text fields that are shown (`text`, `reason`, `header`, `content`, `args`, `message`, `marker`) are templates:
`{expression}` is replaced by its value (lists print as `a, b`, maps as `k: v, k2: v2`, null as `none`); write
literal braces as `{{` and `}}`. Phase templates (`template`, `continue_template`, override templates) use the fixed
placeholders instead, including `{notices}`.
"""

_CONSTRUCTS = """\
## Sections
| key | entries | fields of an entry |
|---|---|---|
| `fields` | derived values (table above) | `name` (lower_case, not a built-in), `kind`, the kind's keys |
| `notices` | rule tables shown in prompts | `name`, `phases` [PHASE..], `rules` [{`when` (default true), `text`}], `mode` all (every rule that holds) / first (a ladder: the first that holds), `placement` inline/top/bottom/both, `header` (template, shown above the lines when any rule holds) |
| `kept_files` | files the runtime rewrites | `file` (declared under files), `before` PHASE (default the last phase), `content` (template) |
| `prune` | bounded files | `file`, `after` PHASE (default the first phase), `over_lines` (prune when the file has more lines), `keep_last` (>= 1, < over_lines), `keep_head` (leading lines kept, e.g. a header; default 0), `marker` (template with {pruned} {kept}; default `[... {pruned} older entries pruned ...]`; '' for none) |
| `auto_ops` | ops the runtime runs | `op` (declared op), `args` (template), exactly one of `before` PHASE (read-only ops; the result is shown in `{notices}`) or `after` PHASE (any op; sees `wrote`), optional `when` |
| `gate` | one precondition table | `rules` [{`when`, `reason`}] (see `action`, `rejections`), `max_rejections` (1-10, default 2), `message` (template with {reason}; default `ACTION REJECTED: {reason}`) |
| `repair` | ordered rewrites of the committed action | a builtin name, `{map: {written: action}}` (case- and space-insensitive keys), or `{pattern: RE2, replace: 'text with \\\\1'}` (whole-action match) |
| `prompt_overrides` | alternative prompts | `phase`, `when`, `template` (phase placeholders), `ops` (a subset of the phase's ops; [] = answer only) |

## Keyed upsert ops (`semantics: upsert_keyed`)
`<|OP|>key|text<|END|>` replaces the file's entry for the key (else appends it). Options on the op: `file` (bind it
to one file), `key_pattern` (RE2 the key must fully match), `key_ignore` (characters removed from the key first,
e.g. `"() "` so `(3, 4)` becomes `3,4`), `line_format` (how an entry is written and found, e.g. `"({key}): {text}"`;
default `key|text`), `key_grammar` (the usage shown to the model, e.g. `x,y|description`).
"""


def _table(head: str, rows: dict[str, str]) -> str:
    return "\n".join([f"| {head} | meaning |", "|---|---|"] + [f"| `{k}` | {v} |" for k, v in rows.items()])


def spec_language_markdown() -> str:
    kinds = {f"{k}" + (" (" + ", ".join(sorted(keys)) + ")" if keys else ""): desc
             for k, (keys, desc) in rs.FIELD_KINDS.items()}
    limits = (f"At most {rs.MAX_FIELDS} fields, {rs.MAX_NOTICES} notices, {rs.MAX_RULES_PER_TABLE} rules per table "
              f"and {rs.MAX_RULES_TOTAL} in all, {rs.MAX_KEPT} kept files, {rs.MAX_PRUNE} prune policies, "
              f"{rs.MAX_AUTO_OPS} runtime ops, {rs.MAX_OVERRIDES} overrides, {rs.MAX_REPAIR} repair-map entries, "
              f"windows of {rs.MAX_WINDOW}; expressions of {expr.MAX_EXPR_CHARS} characters, {expr.MAX_NODES} parts "
              f"and depth {expr.MAX_DEPTH}; templates of {expr.MAX_TEMPLATE_CHARS} characters; regexes of 500 "
              "characters (RE2: no backreferences or lookaround). A field may not depend on itself in the same "
              "step (use `kind: previous`). Every violation is refused when the spec loads, naming the field.")
    parts = [
        _GUIDE,
        "### Functions\n" + _table("function", {k: v[3] for k, v in sorted(expr.FUNCTIONS.items())}),
        "## Built-in fields\n" + _table("field", rs.BUILTIN_FIELDS),
        "Only in `gate` rules: " + "; ".join(f"`{k}` {v}" for k, v in rs.GATE_FIELDS.items()) + ". Only in `after` "
        "runtime ops: " + "; ".join(f"`{k}` {v}" for k, v in rs.AFTER_FIELDS.items()) + ". Only in prune markers: "
        + "; ".join(f"`{k}` {v}" for k, v in rs.PRUNE_FIELDS.items()) + ".",
        "## Derived field kinds (keys in parentheses)\n" + _table("kind", kinds),
        _CONSTRUCTS,
        "### Repair builtins\n" + _table("builtin", rs.REPAIR_BUILTINS),
        "## Limits\n" + limits,
        "## Example (a complete runtime section)\n```yaml\n" + EXAMPLE + "```",
    ]
    return "\n\n".join(p.rstrip("\n") for p in parts) + "\n"
