// Hash routes (#/flags/beta?tab=audit): the console is static files, so every page is reachable without a server
// route of its own.
import { useEffect, useState } from 'preact/hooks';

export function current() {
  const hash = location.hash.replace(/^#/, '') || '/';
  const [path, search = ''] = hash.split('?');
  return { path, parts: path.split('/').filter(Boolean).map(decodeURIComponent), params: new URLSearchParams(search) };
}

export function useRoute() {
  const [route, setRoute] = useState(current());
  useEffect(() => {
    const changed = () => setRoute(current());
    addEventListener('hashchange', changed);
    return () => removeEventListener('hashchange', changed);
  }, []);
  return route;
}

export function go(path, params = {}) {
  const search = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== '' && v !== undefined && v !== null));
  const text = search.toString();
  location.hash = `#${path}${text ? `?${text}` : ''}`;
}

export function link(path) {
  return `#${path}`;
}
