import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { Ajv, type ErrorObject } from 'ajv';
import { UserError } from '../util/errors.js';
import { closestWord } from './suggest.js';
import { describeJsonError } from '../util/json-error.js';
import { checkRecipe } from './check.js';
import { emptyRecipe, recipeSchema, type Recipe } from './schema.js';

export { emptyRecipe };

/** A recipe is a few KiB; anything this large is the wrong file. */
const MAX_RECIPE_BYTES = 1 << 20;
/** One line of errors stays readable; the rest are counted. */
const MAX_ERRORS_SHOWN = 5;

let compiled: ReturnType<Ajv['compile']> | undefined;

function validator(): ReturnType<Ajv['compile']> {
  // verbose: errors carry their schema, whose description and properties make the messages.
  compiled ??= new Ajv({ strict: true, allErrors: true, verbose: true }).compile(recipeSchema);
  return compiled;
}

/**
 * Reads and checks a recipe file. Errors are one line naming the file and the JSON pointer of each problem:
 * `layers/demo/image.json: /env/PORT: must be string, got number 8000`.
 */
export function loadRecipe(file: string): Recipe {
  const text = readRecipeText(file);
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch {
    throw new UserError(`${file}: not valid JSON: ${describeJsonError(text)}`);
  }
  return parseRecipe(data, file);
}

/** Checks an already-parsed recipe (e.g. from a test or another tool); `where` names it in errors. */
export function parseRecipe(data: unknown, where: string): Recipe {
  const validate = validator();
  if (!validate(data)) throw new UserError(`${where}: ${formatSchemaErrors(validate.errors ?? [])}`);
  const recipe = data as Recipe;
  checkRecipe(recipe, where);
  return recipe;
}

function readRecipeText(file: string): string {
  let fd: number;
  try {
    fd = openSync(file, 'r');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw new UserError(`${file}: cannot read the recipe${code === 'ENOENT' ? ': no such file' : code ? ` (${code})` : ''}`);
  }
  try {
    const stat = fstatSync(fd);
    if (!stat.isFile()) throw new UserError(`${file}: the recipe is not a regular file`);
    if (stat.size > MAX_RECIPE_BYTES) throw new UserError(`${file}: ${stat.size} bytes is too large for a recipe (at most 1 MiB)`);
    const buffer = Buffer.alloc(stat.size);
    let read = 0;
    while (read < buffer.length) {
      const n = readSync(fd, buffer, read, buffer.length - read, read);
      if (n === 0) break;
      read += n;
    }
    const text = buffer.subarray(0, read).toString('utf8');
    // Editors on some systems save a byte-order mark; JSON.parse refuses it.
    return text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
  } finally {
    closeSync(fd);
  }
}

/** All of ajv's errors as one line, most useful first and without the duplicates ajv reports for one problem. */
export function formatSchemaErrors(errors: ErrorObject[]): string {
  const messages: string[] = [];
  for (const error of errors) {
    const message = describeSchemaError(error);
    if (message !== null && !messages.includes(message)) messages.push(message);
  }
  const shown = messages.slice(0, MAX_ERRORS_SHOWN);
  const more = messages.length - shown.length;
  return shown.join('; ') + (more > 0 ? `; and ${more} more` : '');
}

function describeSchemaError(error: ErrorObject): string | null {
  const at = error.instancePath === '' ? '/' : error.instancePath;
  const schema = error.parentSchema as { description?: string; properties?: Record<string, unknown> } | undefined;
  switch (error.keyword) {
    case 'additionalProperties': {
      const key = String(error.params.additionalProperty);
      const known = Object.keys(schema?.properties ?? {});
      const suggestion = closestWord(key, known);
      return `unknown key '${key}' at ${at}${suggestion ? ` (did you mean '${suggestion}'?)` : ''}`;
    }
    case 'propertyNames':
      // The pattern error inside it already said what is wrong with the name.
      return null;
    case 'pattern':
      if (error.propertyName !== undefined) {
        return `${at}: invalid key '${error.propertyName}': expected ${schema?.description ?? `a name matching ${error.params.pattern}`}`;
      }
      return `${at}: expected ${schema?.description ?? `a string matching ${error.params.pattern}`}, got ${show(error.data)}`;
    case 'type':
      return `${at}: must be ${article(String(error.params.type))}, got ${typeName(error.data)}${scalar(error.data)}`;
    case 'enum': {
      const allowed = (error.params.allowedValues as unknown[]).map(String);
      const suggestion = typeof error.data === 'string' ? closestWord(error.data, allowed) : undefined;
      return `${at}: must be one of ${allowed.join(', ')}, got ${show(error.data)}${suggestion ? ` (did you mean '${suggestion}'?)` : ''}`;
    }
    case 'required':
      return `${at}: missing required key '${String(error.params.missingProperty)}'`;
    case 'minItems':
      return `${at}: must not be empty`;
    default:
      return `${at}: ${error.message ?? 'is invalid'}${typeof error.data === 'number' ? `, got ${error.data}` : ''}`;
  }
}

function article(type: string): string {
  return type === 'object' || type === 'array' || type === 'integer' ? `an ${type}` : `a ${type}`;
}

function typeName(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'object') return 'an object';
  if (typeof value === 'number' && !Number.isInteger(value)) return 'a fraction';
  return typeof value === 'string' ? 'a string' : typeof value === 'number' ? 'a number' : typeof value;
}

function scalar(value: unknown): string {
  return typeof value === 'number' || typeof value === 'boolean' || typeof value === 'string' ? ` ${show(value)}` : '';
}

function show(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}
