import { describe, it, expect } from 'vitest';
import {
  checkRequirements,
  formatUnmet,
  markerEnvironment,
  type Distribution,
} from '../../../src/wheels/checks/requirements.js';
import { UserError } from '../../../src/util/errors.js';

const env = markerEnvironment({ version: '3.11', fullVersion: '3.11.9' });

function wheel(name: string, version: string, requiresDist: string[] = [], requiresPython?: string): Distribution {
  return { name, version, requiresDist, source: `/w/${name}-${version}-py3-none-any.whl`, wheel: true, ...(requiresPython ? { requiresPython } : {}) };
}
function held(name: string, version: string, requiresDist: string[] = []): Distribution {
  return { name, version, requiresDist, source: `/nix/store/x-${name}/lib/python3.11/site-packages/${name}-${version}.dist-info/METADATA`, wheel: false };
}

describe('requirements check', () => {
  it('passes when every applicable requirement is met by the closure or another wheel', () => {
    const result = checkRequirements({
      wheels: [
        wheel('vllm', '0.12.0+rocm711', ['torch==2.9.1', 'fastapi>=0.115.0', 'Typing_Extensions>=4.10', 'pywin32; sys_platform == "win32"', 'uvloop; python_version < "3.8"']),
        wheel('torch', '2.9.1+rocm7.1', ['filelock', 'sympy>=1.13.3']),
      ],
      closureDistributions: [held('fastapi', '0.115.4'), held('typing-extensions', '4.12.2'), held('filelock', '3.16.1'), held('sympy', '1.13.3')],
      environment: env,
    });
    expect(result).toEqual({ unmet: [], waived: [] });
  });

  it('lists unmet requirements with name, wanted and found', () => {
    const { unmet } = checkRequirements({
      wheels: [wheel('vllm', '0.12.0', ['fastapi>=0.115.0', 'pydantic>=2.12.0', 'openai>=1.99.1'])],
      closureDistributions: [held('fastapi', '0.110.0'), held('pydantic', '2.12.3')],
      environment: env,
    });
    expect(unmet).toEqual([
      { requirer: 'vllm 0.12.0', name: 'fastapi', wanted: 'fastapi>=0.115.0', found: '0.110.0' },
      { requirer: 'vllm 0.12.0', name: 'openai', wanted: 'openai>=1.99.1', found: null },
    ]);
    expect(unmet.map(formatUnmet)).toEqual([
      'vllm 0.12.0 requires fastapi>=0.115.0, found 0.110.0',
      'vllm 0.12.0 requires openai>=1.99.1, not found',
    ]);
  });

  it('moves waived names (any spelling) out of the failures', () => {
    const result = checkRequirements({
      wheels: [wheel('torch', '2.9.1', ['pytorch-triton-rocm==3.5.1; platform_system == "Linux"', 'opencv_python_headless>=4.13'])],
      closureDistributions: [],
      environment: env,
      waive: ['Pytorch_Triton.ROCm'],
    });
    expect(result.unmet.map((u) => u.name)).toEqual(['opencv_python_headless']);
    expect(result.waived.map((u) => u.name)).toEqual(['pytorch-triton-rocm']);
  });

  it('evaluates markers for the image, not for the build machine', () => {
    const reqs = ['a; platform_machine == "aarch64"', 'b; python_version >= "3.12"', 'c; python_full_version < "3.11.4"', 'd; implementation_name == "pypy"'];
    expect(checkRequirements({ wheels: [wheel('w', '1', reqs)], closureDistributions: [], environment: env }).unmet).toEqual([]);
    const arm312 = markerEnvironment({ version: '3.12', fullVersion: '3.12.1' }, 'aarch64');
    expect(checkRequirements({ wheels: [wheel('w', '1', reqs)], closureDistributions: [], environment: arm312 }).unmet.map((u) => u.name)).toEqual(['a', 'b']);
    const early = markerEnvironment({ version: '3.11', fullVersion: '3.11.2' });
    expect(checkRequirements({ wheels: [wheel('w', '1', reqs)], closureDistributions: [], environment: early }).unmet.map((u) => u.name)).toEqual(['c']);
  });

  it('follows extras: fastapi[standard] checks what the standard extra adds, once', () => {
    const fastapi = held('fastapi', '0.115.4', ['starlette<0.42,>=0.40', 'uvicorn[standard]>=0.12.0; extra == "standard"', 'httpx>=0.23; extra == "standard"', 'ujson; extra == "all"']);
    const uvicorn = held('uvicorn', '0.32.0', ['click>=7.0', 'uvloop>=0.14.0; extra == "standard"', 'colorama>=0.4; sys_platform == "win32" and extra == "standard"']);
    const { unmet } = checkRequirements({
      wheels: [wheel('vllm', '0.12.0', ['fastapi[standard]>=0.115.0']), wheel('other', '1', ['fastapi[Standard]'])],
      // starlette and click are fastapi's and uvicorn's own requirements: Nix's business, not checked.
      closureDistributions: [fastapi, uvicorn, held('httpx', '0.22.0')],
      environment: env,
    });
    expect(unmet).toEqual([
      { requirer: 'fastapi[standard] 0.115.4', name: 'httpx', wanted: 'httpx>=0.23', found: '0.22.0' },
      { requirer: 'uvicorn[standard] 0.32.0', name: 'uvloop', wanted: 'uvloop>=0.14.0', found: null },
    ]);
  });

  it('compares versions as PEP 440 does: local labels, pre-releases, post-releases', () => {
    const check = (spec: string, version: string) =>
      checkRequirements({ wheels: [wheel('w', '1', [`x${spec}`])], closureDistributions: [held('x', version)], environment: env }).unmet.length === 0;
    expect(check('==2.9.1', '2.9.1+rocm7.1')).toBe(true);
    expect(check('>=2.9', '2.9.1+rocm7.1')).toBe(true);
    expect(check('>=1.0', '2.0rc1')).toBe(true); // pip check counts an installed pre-release
    expect(check('~=1.4.2', '1.4.9')).toBe(true);
    expect(check('~=1.4.2', '1.5.0')).toBe(false);
    expect(check('==1.*', '1.7')).toBe(true);
    expect(check('!=1.0.*,>=0.9', '1.0.3')).toBe(false);
    expect(check('>1.0', '1.0.post1')).toBe(false);
    expect(check('>=1', 'not-a-version')).toBe(false);
    expect(check('', 'not-a-version')).toBe(true);
  });

  it('lets a wheel replace the closure distribution of the same name', () => {
    const { unmet } = checkRequirements({
      wheels: [wheel('vllm', '0.12.0', ['typing-extensions>=4.10']), wheel('typing_extensions', '4.12.2')],
      closureDistributions: [held('typing-extensions', '4.7.0')],
      environment: env,
    });
    expect(unmet).toEqual([]);
  });

  it('checks each wheel against Requires-Python', () => {
    const { unmet } = checkRequirements({
      wheels: [wheel('new', '1', [], '>=3.12'), wheel('ok', '1', [], '>=3.10,<3.14')],
      closureDistributions: [],
      environment: env,
    });
    expect(unmet).toEqual([{ requirer: 'new 1', name: 'python', wanted: 'python>=3.12', found: '3.11.9' }]);
  });

  it('accepts URL requirements when the distribution is present', () => {
    const { unmet } = checkRequirements({
      wheels: [wheel('w', '1', ['x @ https://example.com/x-1.0.tar.gz', 'y @ file:///y.whl'])],
      closureDistributions: [held('x', '0.1')],
      environment: env,
    });
    expect(unmet).toEqual([{ requirer: 'w 1', name: 'y', wanted: 'y @ file:///y.whl', found: null }]);
  });

  it('refuses a malformed Requires-Dist, naming the wheel and the line', () => {
    const run = () => checkRequirements({ wheels: [wheel('bad', '1', ['torch >=='])], closureDistributions: [], environment: env });
    expect(run).toThrowError(UserError);
    expect(run).toThrowError(/^\/w\/bad-1-py3-none-any\.whl: Requires-Dist "torch >==" is not a valid requirement: .* at column \d+$/);
  });

  it('assumes x.y.0 when the store path does not tell the full version', () => {
    expect(markerEnvironment({ version: '3.11', fullVersion: null }).python_full_version).toBe('3.11.0');
    expect(env).toMatchObject({ python_version: '3.11', sys_platform: 'linux', platform_machine: 'x86_64', implementation_name: 'cpython', os_name: 'posix', platform_system: 'Linux' });
  });
});
