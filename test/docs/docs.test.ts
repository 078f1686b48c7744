import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cliOk, REPO } from '../helpers/cli.js';

/**
 * The documents say what the code and the CLI are: docs/layout.md names every folder and file of src/
 * and nothing else, the README documents every flag the CLI has, and links between documents land.
 */

const read = (file: string) => readFileSync(join(REPO, file), 'utf8');
const DOCUMENTS = ['README.md', ...readdirSync(join(REPO, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)];

function walk(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? walk(path) : [path];
  });
}

describe('docs/layout.md', () => {
  const layout = read('docs/layout.md');
  const sources = walk(join(REPO, 'src'))
    .filter((f) => f.endsWith('.ts'))
    .map((f) => relative(join(REPO, 'src'), f))
    .sort();
  const folders = [...new Set(sources.map((f) => dirname(f)))].sort();

  it('has a section for every folder of src/, and none for a folder that is not there', () => {
    const sections = [...layout.matchAll(/^### `src\/(.+)\/`$/gm)].map((m) => m[1]!).sort();
    expect(sections).toEqual(folders);
  });

  it('names every file of src/ in its folder’s section', () => {
    const sectionOf = new Map<string, string>();
    for (const part of layout.split(/^(?=### `src\/)/m).slice(1)) sectionOf.set(/^### `src\/(.+)\/`/.exec(part)![1]!, part);
    const missing = sources.filter((file) => !sectionOf.get(dirname(file))?.includes(`\`${file}\``));
    expect(missing).toEqual([]);
  });

  it('names no file that is not in src/', () => {
    const folderNames = new Set(folders.map((f) => f.split('/')[0]!));
    const named = [...layout.matchAll(/`([a-z-]+(?:\/[a-z-]+)*\/[a-z0-9-]+\.ts)`/g)].map((m) => m[1]!);
    const stale = [...new Set(named)].filter((file) => folderNames.has(file.split('/')[0]!) && !sources.includes(file));
    expect(stale).toEqual([]);
  });
});

describe('README.md', () => {
  const readme = read('README.md');
  const commands = ['build-image', 'inspect', 'push', 'cache stats', 'cache prune', 'sbom'];

  it.each(commands)('documents every flag of %s', (command) => {
    const help = cliOk([...command.split(' '), '--help']).stdout;
    const flags = [...new Set([...help.matchAll(/^\s+(?:-\w, )?(--[a-z][a-z-]*)/gm)].map((m) => m[1]!))].filter((f) => f !== '--help');
    expect(flags.length).toBeGreaterThan(0);
    const undocumented = flags.filter((flag) => !new RegExp(`${flag}(?![a-z-])`).test(readme));
    expect(undocumented).toEqual([]);
  });

  it('installs only in ways that work: no package on the npm registry', () => {
    expect(readme).not.toMatch(/npx nix2oci|npm install -g nix2oci\b|npm i -g nix2oci\b/);
    expect(readme).toContain('npm install -g ./nix2oci-<version>.tgz');
    expect(readme).toContain('npm test');
    expect(readme).toContain('npm run test:unit');
    expect(readme).toContain('npm start');
  });
});

/** GitHub's anchor for a heading: lowercase, punctuation dropped, each space a hyphen. */
function slug(heading: string): string {
  return heading
    .toLowerCase()
    .replace(/[^\p{L}\p{N} _-]/gu, '')
    .replace(/ /g, '-');
}

function anchors(markdown: string): Set<string> {
  const seen = new Map<string, number>();
  const result = new Set<string>();
  for (const m of markdown.matchAll(/^#{1,6} (.+)$/gm)) {
    const base = slug(m[1]!);
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    result.add(n === 0 ? base : `${base}-${n}`);
  }
  return result;
}

describe('links between documents', () => {
  it.each(DOCUMENTS)('%s links only to files and headings that exist', (document) => {
    // Code blocks are not markdown.
    const text = read(document).replace(/^```[\s\S]*?^```/gm, '').replace(/^ {4}.*$/gm, '');
    const broken: string[] = [];
    for (const m of text.matchAll(/\]\(([^)\s]+)\)/g)) {
      const target = m[1]!;
      if (/^[a-z]+:/.test(target)) continue;
      const [path, anchor] = target.split('#') as [string, string | undefined];
      const file = path === '' ? join(REPO, document) : resolve(REPO, dirname(document), path);
      if (!existsSync(file)) {
        broken.push(target);
        continue;
      }
      if (anchor !== undefined && !anchors(readFileSync(file, 'utf8')).has(anchor)) broken.push(target);
    }
    expect(broken).toEqual([]);
  });
});
