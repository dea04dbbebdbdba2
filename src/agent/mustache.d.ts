// The part of mustache.js 4 (no types of its own) that the agent uses: parse to check a template, render it.
declare module 'mustache' {
  /** [type, value, start, end, children?, sectionEnd?]: type is text, name, &, #, ^, >, !, = */
  export type TemplateSpans = Array<[string, string, number, number, TemplateSpans?, number?, boolean?]>;
  interface RenderConfig {
    escape?: (value: unknown) => string;
    tags?: [string, string];
  }
  interface MustacheStatic {
    parse(template: string, tags?: [string, string]): TemplateSpans;
    render(template: string, view: unknown, partials?: Record<string, string>, config?: RenderConfig): string;
  }
  const Mustache: MustacheStatic;
  export default Mustache;
}
