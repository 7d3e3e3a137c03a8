// Feed titles and summaries are HTML fragments (the XML parser has undone one level of escaping)
// and are untrusted. What the agent reads must be plain text: no tags, no entities, no control
// characters. A small regex pass is enough here because nothing is rendered, only read.
import { CONTROL_CHARACTERS } from "../bake/prompt.js";
import { decodeWindows1252 } from "./decode.js";

/** Raw field length looked at: we keep a few hundred characters, so more only costs time. */
const MAX_RAW_FIELD_CHARS = 32 * 1024;

// The named entities feeds actually use. Unknown names are left as written (harmless text).
const NAMED_ENTITIES: Record<string, string> = {
  amp: "&", lt: "<", gt: ">", quot: '"', apos: "'", nbsp: " ",
  ensp: " ", emsp: " ", thinsp: " ", shy: "", zwnj: "", zwj: "",
  ndash: "–", mdash: "—", hellip: "…", bull: "•", middot: "·",
  lsquo: "‘", rsquo: "’", sbquo: "‚", ldquo: "“", rdquo: "”", bdquo: "„",
  laquo: "«", raquo: "»", lsaquo: "‹", rsaquo: "›", prime: "′", Prime: "″",
  copy: "©", reg: "®", trade: "™", deg: "°", plusmn: "±", times: "×", divide: "÷",
  euro: "€", pound: "£", yen: "¥", cent: "¢", sect: "§", para: "¶", dagger: "†", Dagger: "‡",
  iexcl: "¡", iquest: "¿", frac12: "½", frac14: "¼", frac34: "¾", micro: "µ",
  agrave: "à", aacute: "á", acirc: "â", atilde: "ã", auml: "ä", aring: "å", aelig: "æ",
  ccedil: "ç", egrave: "è", eacute: "é", ecirc: "ê", euml: "ë",
  igrave: "ì", iacute: "í", icirc: "î", iuml: "ï", ntilde: "ñ",
  ograve: "ò", oacute: "ó", ocirc: "ô", otilde: "õ", ouml: "ö", oslash: "ø",
  ugrave: "ù", uacute: "ú", ucirc: "û", uuml: "ü", yacute: "ý", yuml: "ÿ", szlig: "ß",
  Agrave: "À", Aacute: "Á", Acirc: "Â", Atilde: "Ã", Auml: "Ä", Aring: "Å", AElig: "Æ",
  Ccedil: "Ç", Egrave: "È", Eacute: "É", Ecirc: "Ê", Euml: "Ë",
  Igrave: "Ì", Iacute: "Í", Icirc: "Î", Iuml: "Ï", Ntilde: "Ñ",
  Ograve: "Ò", Oacute: "Ó", Ocirc: "Ô", Otilde: "Õ", Ouml: "Ö", Oslash: "Ø",
  Ugrave: "Ù", Uacute: "Ú", Ucirc: "Û", Uuml: "Ü", Yacute: "Ý", oelig: "œ", OElig: "Œ",
  scaron: "š", Scaron: "Š", larr: "←", rarr: "→", uarr: "↑", darr: "↓",
};


function fromCodePoint(cp: number): string {
  // HTML (and browsers) read &#128;-&#159; as windows-1252, which is what the author meant.
  if (cp >= 0x80 && cp <= 0x9f) return decodeWindows1252(Uint8Array.of(cp));
  if (!Number.isFinite(cp) || cp <= 0 || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return "\uFFFD";
  return String.fromCodePoint(cp);
}

const ENTITY = /&(?:#(\d{1,7})|#[xX]([0-9a-fA-F]{1,6})|([A-Za-z][A-Za-z0-9]{1,31}));/g;

export function decodeEntities(s: string): string {
  return s.replace(ENTITY, (whole, dec, hex, name) => {
    if (dec !== undefined) return fromCodePoint(parseInt(dec, 10));
    if (hex !== undefined) return fromCodePoint(parseInt(hex, 16));
    return Object.prototype.hasOwnProperty.call(NAMED_ENTITIES, name) ? NAMED_ENTITIES[name]! : whole;
  });
}

// Control characters (as a remembered fact refuses them), zero-width characters and bidi
// overrides: invisible in a prompt, so they can only hide or reorder what the agent is told.
// Whitespace controls become spaces.
const INVISIBLES = new RegExp(`[${CONTROL_CHARACTERS}\\u200B-\\u200F\\u202A-\\u202E\\u2060-\\u2064\\u2066-\\u2069\\uFEFF]`, "g");

/** HTML fragment -> plain one-line text (whitespace collapsed, not yet length-bounded). */
export function htmlToText(html: string): string {
  let s = html.length > MAX_RAW_FIELD_CHARS ? html.slice(0, MAX_RAW_FIELD_CHARS) : html;
  s = markupToText(s);
  // Feeds escaped twice are common ("&amp;nbsp;" or "&amp;#8217;" inside CDATA, "&amp;lt;p&amp;gt;"
  // in a description): a reference still there after one pass was meant as a character, so the
  // text gets one more pass. (Prose that quotes an entity by name loses it; news rarely does.)
  if (hasEntity(s)) s = markupToText(s);
  return s.replace(INVISIBLES, " ").replace(/\s+/g, " ").trim();
}

function markupToText(s: string): string {
  s = dropNonProse(s)
    .replace(/<!\[CDATA\[|\]\]>/g, "")
    // A tag starts with a letter (or /letter, !doctype), so "a < b" in prose survives. It cannot
    // contain "<", which keeps this linear on hostile input. Tags become spaces so that
    // "one<br>two" does not become "onetwo".
    .replace(/<\/?[A-Za-z][^<>]*>|<![A-Za-z][^<>]*>/g, " ");
  return decodeEntities(s);
}

function hasEntity(s: string): boolean {
  for (const m of s.matchAll(ENTITY)) if (m[3] === undefined || Object.prototype.hasOwnProperty.call(NAMED_ENTITIES, m[3])) return true;
  return false;
}

/** Remove comments and whole script/style/noscript/template elements, content included. An
 * unclosed one swallows the rest of the text. A scan with indexOf rather than a lazy regex,
 * which goes quadratic on many unclosed openers. */
function dropNonProse(s: string): string {
  const opener = /<!--|<(script|style|noscript|template)\b[^<>]*>/gi;
  const lower = s.toLowerCase();
  let out = "";
  let pos = 0;
  for (let m = opener.exec(s); m; m = opener.exec(s)) {
    out += `${s.slice(pos, m.index)} `;
    const closer = m[1] ? `</${m[1].toLowerCase()}` : "-->";
    const at = lower.indexOf(closer, opener.lastIndex);
    const end = at < 0 ? -1 : m[1] ? s.indexOf(">", at) : at + 2;
    pos = end < 0 ? s.length : end + 1;
    opener.lastIndex = pos;
  }
  return out + s.slice(pos);
}
