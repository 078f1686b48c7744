import { describe, it, expect } from 'vitest';
import { execFileSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import {
  evaluateMarker,
  normalizeName,
  parseMarker,
  parseRequirement,
  Pep508Error,
  type MarkerEnvironment,
} from '../../../src/wheels/checks/pep508.js';
import { tools } from '../../helpers/tools.js';

const cpython311: MarkerEnvironment = {
  python_version: '3.11',
  python_full_version: '3.11.9',
  os_name: 'posix',
  sys_platform: 'linux',
  platform_release: '',
  platform_system: 'Linux',
  platform_version: '',
  platform_machine: 'x86_64',
  platform_python_implementation: 'CPython',
  implementation_name: 'cpython',
  implementation_version: '3.11.9',
  extra: '',
};

/** Requirement lines as real wheels write them (torch, vllm, fastapi, …) plus edge cases. */
const corpus = [
  'filelock',
  'typing-extensions>=4.10.0',
  'sympy>=1.13.3',
  'networkx>=2.5.1',
  'jinja2',
  'fsspec>=0.8.5',
  'pytorch-triton-rocm==3.5.1; platform_system == "Linux"',
  'opt-einsum>=3.3; extra == "opt-einsum"',
  'optree>=0.13.0; extra == "optree"',
  'fastapi[standard]>=0.115.0',
  'aiohttp',
  'openai>=1.99.1',
  'pydantic>=2.12.0',
  'prometheus-fastapi-instrumentator>=7.0.0',
  'tokenizers>=0.21.1',
  'outlines_core==0.2.11',
  'lm-format-enforcer==0.11.3',
  'xgrammar==0.1.27; platform_machine == "x86_64" or platform_machine == "aarch64" or platform_machine == "arm64"',
  'numba==0.61.2; python_version > "3.9"',
  'importlib_metadata; python_version < "3.10"',
  'tomli; python_full_version <= "3.11.0a6"',
  'colorama; sys_platform == "win32"',
  'uvloop!=0.15.0,!=0.15.1,>=0.14.0; sys_platform != "win32" and (sys_platform != "cygwin" and platform_python_implementation != "PyPy") and extra == "standard"',
  'Foo.Bar[a, b] (>=1.0,<2) ; python_version < "3.12"',
  'name @ https://example.com/name-1.0.tar.gz ; os_name == "posix"',
  'x ; "linux" in sys_platform',
  'x ; "win" not in sys_platform',
  "x ; platform_machine=='x86_64' and python_version>='3.8'",
  'x ; python_version ~= "3.10"',
  'x ; implementation_name == "cpython" and implementation_version >= "3.11.2"',
  'x ; os.name == "posix"',
  'pkg~=2.2.post3',
  'pkg===1.0-odd',
  'pkg==1.*',
  'pkg[]',
  'pkg (==2.0)',
];

describe('PEP 508 parser', () => {
  it('parses names, extras, specifiers, URLs and markers', () => {
    expect(parseRequirement('Foo.Bar[a, b] (>=1.0,<2) ; python_version < "3.12"')).toMatchObject({
      name: 'Foo.Bar',
      extras: ['a', 'b'],
      specifier: '>=1.0,<2',
      url: null,
    });
    expect(parseRequirement('name @ https://example.com/x.whl ; os_name == "posix"')).toMatchObject({
      name: 'name',
      url: 'https://example.com/x.whl',
      specifier: '',
    });
    expect(parseRequirement('  jinja2  ')).toEqual({ name: 'jinja2', extras: [], specifier: '', url: null, marker: null });
  });

  it('refuses malformed requirements, naming the column', () => {
    const cases: [string, RegExp][] = [
      ['', /expected a distribution name at column 1/],
      ['foo >= ', /expected a version after >= at column 8/],
      ['foo[bar', /expected "," at column 8/],
      ['foo; python_version', /expected a marker operator/],
      ['foo; nonsense == "1"', /unknown marker variable nonsense at column 6/],
      ['foo; python_version == "3', /unterminated string/],
      ['foo >=1.0 junk', /unexpected "j" at column 11/],
      ['-foo', /expected a distribution name/],
    ];
    for (const [text, pattern] of cases) {
      expect(() => parseRequirement(text), text).toThrowError(Pep508Error);
      expect(() => parseRequirement(text), text).toThrowError(pattern);
    }
  });

  it('normalises names as PEP 503 does', () => {
    expect(normalizeName('Foo.Bar__baz--Qux')).toBe('foo-bar-baz-qux');
    expect(normalizeName('outlines_core')).toBe('outlines-core');
  });
});

describe('PEP 508 markers', () => {
  const ev = (m: string, env: Partial<MarkerEnvironment> = {}) => evaluateMarker(parseMarker(m), { ...cpython311, ...env });

  it('compares versions as versions and strings as strings', () => {
    expect(ev('python_version >= "3.9"')).toBe(true);
    expect(ev('python_version < "3.10"')).toBe(false);
    expect(ev('python_version > "3.9"')).toBe(true); // as strings, "3.11" > "3.9" would be false
    expect(ev('python_full_version <= "3.11.0a6"')).toBe(false);
    expect(ev('platform_machine == "x86_64"')).toBe(true);
    expect(ev('"x86" in platform_machine')).toBe(true);
    expect(ev('sys_platform != "win32" and (os_name == "nt" or implementation_name == "cpython")')).toBe(true);
    expect(ev('python_version ~= "3.10"')).toBe(true);
  });

  it('evaluates extras by normalised name', () => {
    expect(ev('extra == "opt-einsum"', { extra: 'opt_einsum' })).toBe(true);
    expect(ev('extra == "Opt.Einsum"', { extra: 'opt-einsum' })).toBe(true);
    expect(ev('extra == "opt-einsum"')).toBe(false);
  });

  it('binds "and" tighter than "or"', () => {
    expect(ev('os_name == "nt" and sys_platform == "linux" or python_version == "3.11"')).toBe(true);
    expect(ev('os_name == "nt" and (sys_platform == "linux" or python_version == "3.11")')).toBe(false);
  });
});

const pipWheel = readdirSync('/usr/share/python-wheels', { withFileTypes: true })
  .map((d) => d.name)
  .find((n) => n.startsWith('pip-'));

describe.runIf(pipWheel && tools('python3'))('PEP 508 against packaging (vendored in pip)', () => {
  it('agrees with packaging on names, extras, specifiers and marker results', () => {
    const envs: Partial<MarkerEnvironment>[] = [{}, { extra: 'standard' }, { python_version: '3.9', python_full_version: '3.9.7' }, { sys_platform: 'win32', os_name: 'nt', platform_system: 'Windows' }, { platform_machine: 'aarch64' }];
    const script = `
import json, sys
from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.specifiers import SpecifierSet
out = []
base, envs, lines = json.load(sys.stdin)
for line in lines:
    r = Requirement(line)
    out.append({
        "name": r.name, "extras": sorted(r.extras), "url": r.url,
        "specifier": sorted(str(s) for s in r.specifier),
        "markers": [r.marker.evaluate({**base, **e}) if r.marker else True for e in envs],
    })
print(json.dumps(out))
`;
    const oracle = JSON.parse(
      execFileSync('python3', ['-c', script], {
        input: JSON.stringify([cpython311, envs, corpus]),
        env: { ...process.env, PYTHONPATH: `/usr/share/python-wheels/${pipWheel}` },
        encoding: 'utf8',
      }),
    );
    const ours = corpus.map((line) => {
      const r = parseRequirement(line);
      return {
        name: r.name,
        extras: [...r.extras].sort(),
        url: r.url,
        specifier: r.specifier ? r.specifier.split(',').map((s) => s.replace(/\s+/g, '')).sort() : [],
        markers: envs.map((e) => (r.marker ? evaluateMarker(r.marker, { ...cpython311, ...e }) : true)),
      };
    });
    ours.forEach((o, i) => expect(o, corpus[i]).toEqual(oracle[i]));
  });
});
