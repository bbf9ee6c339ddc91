/**
 * gRPC targets as the Python SDK reads them (heml.client.with_default_port, _is_loopback):
 * a bare host gets heml's default port, and only targets on this machine may be reached
 * without TLS unless the caller says `insecure: true`. The normalized target is also what
 * per-(server, model) keys are derived from, so both clients derive the same keys.
 */
import { isIP } from "node:net";

/** `heml serve`'s default port (gRPC itself would pick 443). */
export const DEFAULT_PORT = 50051;

/** `host` -> `host:50051`; `host:port`, `[v6]:port` and targets with a scheme are kept. */
export function withDefaultPort(target: string): string {
  if (target.includes("://") || ["unix:", "ipv4:", "ipv6:", "dns:"].some((p) => target.startsWith(p))) return target;
  if (target.startsWith("[")) return target.includes("]:") ? target : `${target}:${DEFAULT_PORT}`;
  const colons = target.split(":").length - 1;
  if (colons === 1 || !target) return target;
  if (colons > 1) return `[${target}]:${DEFAULT_PORT}`; // a bare IPv6 address
  return `${target}:${DEFAULT_PORT}`;
}

function hostIsLoopback(address: string): boolean {
  let host: string;
  if (address.startsWith("[")) host = address.includes("]") ? address.slice(1, address.indexOf("]")) : address;
  else if (address.split(":").length === 2) host = address.split(":")[0];
  else host = address;
  if (host.toLowerCase() === "localhost") return true;
  if (isIP(host) === 4) return host.split(".")[0] === "127";
  if (isIP(host) === 6) return new URL(`http://[${host}]/`).hostname === "[::1]";
  return false;
}

/** Whether every address of a target is on this machine (127/8, ::1, localhost, unix socket). */
export function isLoopback(target: string): boolean {
  if (target.startsWith("unix:") || target.startsWith("unix-abstract:")) return true;
  let rest = target;
  for (const scheme of ["dns:", "ipv4:", "ipv6:"]) {
    if (rest.startsWith(scheme)) {
      rest = rest.slice(scheme.length);
      if (rest.startsWith("//")) {
        const slash = rest.indexOf("/", 2);
        const authority = slash < 0 ? rest.slice(2) : rest.slice(2, slash);
        if (authority) return false; // a resolver of the caller's choice answers for the host
        rest = slash < 0 ? "" : rest.slice(slash + 1);
      }
      break;
    }
  }
  const addresses = rest.split(",").map((a) => a.trim());
  return addresses.every((a) => a.length > 0 && hostIsLoopback(a));
}
